"""The data sets dlx ships, each a loader whose keyword parameters are its options (the one home of their
types, defaults and ranges); conf/dataset/<name>.yaml names it as `_target_`."""

from __future__ import annotations

from typing import Annotated

from dlx.data import bundled, synthetic, vision
from dlx.data.source import Source, loader
from dlx.options import Range

# an option of the file-based sets: a base URL that replaces the canonical mirrors (e.g. an institute's)
Mirror = str | None


@loader(images=True)
def digits() -> Source:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download."""
    x, y = bundled.load_digits()
    return Source(train=(x, y), num_classes=10, name="digits", scale=1.0 / 16.0)  # pixels count 0..16


@loader
def mnist1d(*, root: str = "data") -> Source:
    """MNIST-1D (Greydanus 2020), generated offline and cached under root/mnist1d."""
    data = bundled.load_mnist1d(root=root)
    return Source(train=(data["x"], data["y"]), test=(data["x_test"], data["y_test"]), num_classes=10,
                  name="mnist1d")


@loader
def moons(*, n_samples: Annotated[int, Range(ge=10)] = 2000, noise: Annotated[float, Range(ge=0)] = 0.1) -> Source:
    """Two interleaving half circles; noise is the std of the Gaussian added to each coordinate."""
    return Source(train=synthetic.make_moons(n_samples=n_samples, noise=noise), num_classes=2, name="moons")


@loader
def spirals(*, n_samples: Annotated[int, Range(ge=10)] = 2000, noise: Annotated[float, Range(ge=0)] = 0.2,
            n_classes: Annotated[int, Range(ge=2)] = 2, turns: Annotated[float, Range(gt=0)] = 1.5) -> Source:
    """n_classes interleaved spiral arms, each winding `turns` times; noise jitters the angle (radians)."""
    x, y = synthetic.make_spirals(n_samples=n_samples, noise=noise, n_classes=n_classes, turns=turns)
    return Source(train=(x, y), num_classes=int(n_classes), name="spirals")


def _idx(name: str, root: str, download: bool, mirror: Mirror) -> Source:
    data = vision.load_idx_dataset(name=name, root=root, download_missing=download, mirror=mirror)
    return Source(train=(data["x_train"], data["y_train"]), test=(data["x_test"], data["y_test"]), num_classes=10,
                  name=name, scale=1.0 / 255.0)


@loader(images=True)
def mnist(*, root: str = "data", download: bool = False, mirror: Mirror = None) -> Source:
    """MNIST (LeCun et al. 1998) from its IDX files under root/mnist; download fetches and checksums them."""
    return _idx("mnist", root, download, mirror)


@loader(images=True)
def fashion_mnist(*, root: str = "data", download: bool = False, mirror: Mirror = None) -> Source:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files under root/fashion_mnist."""
    return _idx("fashion_mnist", root, download, mirror)


@loader(images=True)
def cifar10(*, root: str = "data", download: bool = False, mirror: Mirror = None) -> Source:
    """CIFAR-10 (Krizhevsky 2009) from its python batches under root/cifar10."""
    data = vision.load_cifar10(root=root, download_missing=download, mirror=mirror)
    return Source(train=(data["x_train"], data["y_train"]), test=(data["x_test"], data["y_test"]), num_classes=10,
                  name="cifar10", scale=1.0 / 255.0)

