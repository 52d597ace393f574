"""Numbers the SAGE paper's supplement publishes for the eight methods.

Robustness (supplement Tables 1-2, PreActResNet18, accuracy %): FGSM ℓ∞
ε = 8/255, FGM ℓ2 ε = 0.5, Gaussian noise σ² = 0.01. Runtime (Table 3): GPU
hours of the whole 300-epoch run on one NVIDIA T4, PreActResNet18 on CIFAR-10
and ResNeXt29-4-24 on CIFAR-100. Clean accuracy: the supplement reports it
for SAGE only (Table 4, best settings); the baselines' clean accuracies are in
the main paper's Table 1, not reproduced here.

Keys are `config.method` names (`sage_jax.methods`), including the methods
that are still to come.
"""

METHOD_ORDER = ("vanilla", "mixup", "cutmix", "manifold_mixup", "saliencymix",
                "puzzle_mix", "co_mixup", "sage")

# dataset -> method -> {"fgsm", "fgm", "gaussian_noise"} accuracy in %.
ROBUSTNESS = {
    "cifar10": {
        "vanilla": {"fgsm": 79.96, "fgm": 89.67, "gaussian_noise": 89.88},
        "mixup": {"fgsm": 80.93, "fgm": 89.22, "gaussian_noise": 92.56},
        "cutmix": {"fgsm": 79.57, "fgm": 87.81, "gaussian_noise": 77.2},
        "manifold_mixup": {"fgsm": 85.79, "fgm": 90.86, "gaussian_noise": 92.21},
        "saliencymix": {"fgsm": 80.62, "fgm": 88.86, "gaussian_noise": 85.99},
        "puzzle_mix": {"fgsm": 81.96, "fgm": 89.64, "gaussian_noise": 87.60},
        "co_mixup": {"fgsm": 78.78, "fgm": 88.11, "gaussian_noise": 85.25},
        "sage": {"fgsm": 83.75, "fgm": 90.64, "gaussian_noise": 91.67},
    },
    "cifar100": {
        "vanilla": {"fgsm": 49.24, "fgm": 62.19, "gaussian_noise": 52.68},
        "mixup": {"fgsm": 50.51, "fgm": 63.36, "gaussian_noise": 60.76},
        "cutmix": {"fgsm": 44.2, "fgm": 55.57, "gaussian_noise": 28.06},
        "manifold_mixup": {"fgsm": 48.89, "fgm": 61.14, "gaussian_noise": 55.47},
        "saliencymix": {"fgsm": 46.52, "fgm": 59.4, "gaussian_noise": 38.21},
        "puzzle_mix": {"fgsm": 44.58, "fgm": 58.16, "gaussian_noise": 43.96},
        "co_mixup": {"fgsm": 44.32, "fgm": 58.56, "gaussian_noise": 34.46},
        "sage": {"fgsm": 50.18, "fgm": 62.23, "gaussian_noise": 47.68},
    },
}

# dataset -> method -> clean test accuracy in % (PreActResNet18, 300 epochs).
CLEAN_ACCURACY = {"cifar10": {"sage": 96.95}, "cifar100": {"sage": 79.91}}

# dataset -> (model, method -> T4 GPU hours for 300 epochs).
T4_HOURS = {
    "cifar10": ("preactresnet18", {
        "vanilla": 3.35, "mixup": 3.29, "cutmix": 3.38, "manifold_mixup": 3.44,
        "saliencymix": 3.45, "puzzle_mix": 8.9, "co_mixup": 25.29, "sage": 6.83}),
    "cifar100": ("resnext29_4_24", {
        "vanilla": 9.76, "mixup": 9.67, "cutmix": 9.83, "manifold_mixup": 10.27,
        "saliencymix": 10.18, "puzzle_mix": 22.64, "co_mixup": 35.65, "sage": 19.5}),
}


def runtime_ratio(dataset: str, method: str):
  """The paper's T4 time of `method` over vanilla's, or None if unpublished."""
  hours = T4_HOURS.get(dataset, (None, {}))[1]
  if method not in hours:
    return None
  return hours[method] / hours["vanilla"]
