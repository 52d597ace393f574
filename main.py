"""Train and evaluate SAGE (or a baseline) on CIFAR: `sage_jax.cli.run`.

    python main.py --config configs/cifar10.py [--workdir DIR] [--config.field=value ...]

The run resumes automatically from the latest checkpoint in --workdir. A
tfds dataset that is not prepared is downloaded when its host is reachable
(--config.dataset.download=False forbids it); otherwise the run stops within
seconds saying how to prepare it.

    python main.py --config configs/cifar10.py --workdir DIR --mode=eval \
        [--corrupted_dir CIFAR-100-C]

evaluates the latest checkpoint in --workdir (clean, Gaussian noise, FGSM, FGM,
common corruptions) and writes DIR/eval.json and DIR/eval.md; see
sage_jax/evaluate.py. Installed, the same program is the `sage-jax-train`
command.
"""
from sage_jax import cli

if __name__ == "__main__":
  cli.run()
