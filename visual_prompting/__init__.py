"""visual-prompting: adapt a frozen vision model (above all CLIP) to a new task with one learned image prompt.

Library first: ``prompters`` (the prompt designs; ``spectral``: one learned in the DCT basis), ``backbones`` (frozen
models from one spec string, a registry of families: open_clip, EfficientNet-Lite0, torchvision, timm), ``network``
(Hub reachability and cache checks),
``heads`` (CLIP text classifier, label mappings), ``data`` (datasets, splits, cached tensors),
``model`` (``PromptedModel``: the one way to predict), ``train_config`` (a run's settings, events and result),
``training`` (the loop), ``checkpoint`` (a run's files), ``evaluation``, ``prompt_file`` (safetensors + JSON
metadata), ``cli``.
"""
from .backbones import BackboneCache, load_backbone
from .errors import VPError
from .model import PromptedModel
from .prompt_file import load_prompt, save_prompt
from .prompters import PrompterConfig, create_prompter
from . import spectral  # noqa: F401,E402  registers the full_dct prompt kind
from .train_config import TrainConfig, TrainEvent, TrainResult


def _version() -> str:
    """The installed package's version (its metadata). Only when the package is not installed (tests run from the
    source tree) is it read from the one place it is written, pyproject.toml next to this package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visual-prompting")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()


def __getattr__(name):
    """``train`` (the loop) is imported when first asked for: importing the package for its configuration does not
    import the trainer."""
    if name == "train":
        from .training import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__all__ = ["BackboneCache", "PromptedModel", "PrompterConfig", "TrainConfig", "TrainEvent", "TrainResult", "VPError",
           "__version__", "create_prompter", "load_backbone", "load_prompt", "save_prompt", "train"]
