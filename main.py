"""Train and evaluate SAGE (or a baseline) on CIFAR: `sage_jax.cli.run`.

    python main.py --config configs/cifar10.py [--workdir DIR] [--config.field=value ...]

The run resumes automatically from the latest checkpoint in --workdir. A
tfds dataset that is not prepared is downloaded when its host is reachable
(--config.dataset.download=False forbids it); otherwise the run stops within
seconds saying how to prepare it.

Exit status: 0 done; 1 a problem to fix (config, data, a workdir of another
run, unreadable checkpoints; one ERROR line); 3 training diverged (a
non-finite loss, gradient or parameter); 75 stopped by SIGTERM/SIGINT after
saving the current step (rerun the same command to resume). See the README's
"When a run fails".

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
