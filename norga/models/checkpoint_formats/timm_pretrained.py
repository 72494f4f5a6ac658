"""The checkpoint format of timm's own pretrained machinery: the Hugging Face hub cache, or a local
``.npz``/``.pth``/``.safetensors`` file, checked as strictly as a state dict."""

from __future__ import annotations

import logging
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from norga.models.checkpoint_formats import reading
from norga.models.checkpoint_formats.reading import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    LoadReport,
    check_compatible,
    model_text,
    require_file,
    unreadable,
)

log = logging.getLogger(__name__)

@dataclass
class TimmPretrained:
    """Weights through timm's own pretrained machinery, for the architecture's pretrained tag
    (e.g. ``vit_base_patch16_224.orig_in21k``): the Hugging Face hub (or its cache) when ``checkpoint`` is
    None, else that local ``.npz`` (timm's JAX loader) / ``.pth`` / ``.safetensors`` file.

    ``drop``: regexes of checkpoint keys the model legitimately does not have (e.g. a classifier head).
    ``cache_dir``: Hugging Face cache override (None: the hub's default, HF_HOME / HF_HUB_CACHE).
    """

    drop: list[str] = field(default_factory=list)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.drop = list(self.drop or [])
        self._drop = [re.compile(p) for p in self.drop]

    @staticmethod
    def _hub_files(arch: str) -> tuple[str | None, list[str]]:
        """The hub repository of ``arch``'s pretrained tag and the weight files timm would look for."""
        cfg = timm.models.get_pretrained_cfg(arch)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        filename = getattr(cfg, "hf_hub_filename", None)
        return repo, [filename] if filename else ["model.safetensors", "pytorch_model.bin"]

    def _hub_error(self, name: str, arch: str, source: str, repo: str | None,
                   reason: str) -> CheckpointNotFoundError:
        return CheckpointNotFoundError(
            f"backbone {name!r}: the weights of timm model {arch!r} are not in the Hugging Face cache "
            f"({self.cache_dir or 'HF_HOME / HF_HUB_CACHE'}) and cannot be downloaded ({reason}).\n"
            f"  public source: {source or repo}\n"
            f"  pass backbone.checkpoint=/path/to/file (.npz, .pth or .safetensors), or fill the HF cache on "
            f"a machine with internet and run with HF_HUB_OFFLINE=1 (and the same HF_HOME).",
            None, source)

    def check_available(self, checkpoint: str | None, name: str = "", source: str = "",
                        arch: str = "") -> None:
        """A given file must exist; without one, the hub weights must be in the cache, or are downloaded
        now (online), so that a download failure stops the run before any data is loaded."""
        if checkpoint is not None:
            require_file(checkpoint, name, source)
            return
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        hub_id, filenames = self._hub_files(arch)
        if hub_id is None:
            return  # weights come from a URL; timm's download errors are reported by load_into
        repo, _, revision = hub_id.partition("@")
        revision = revision or None
        if any(isinstance(try_to_load_from_cache(repo, f, cache_dir=self.cache_dir, revision=revision), str)
               for f in filenames):
            return
        if constants.is_offline_mode():
            raise self._hub_error(name, arch, source, hub_id, "HF_HUB_OFFLINE is set")
        for filename in filenames:
            try:
                hf_hub_download(repo, filename, revision=revision, cache_dir=self.cache_dir)
                return
            except LocalEntryNotFoundError as err:  # no connection (checked before its parent class)
                raise self._hub_error(name, arch, source, hub_id, "the hub is unreachable") from err
            except EntryNotFoundError:
                continue  # the repository has no file of that name: timm would try the next one
            except OSError as err:  # repository not found, HTTP errors
                raise self._hub_error(name, arch, source, hub_id, str(err).splitlines()[0]) from err
        raise self._hub_error(name, arch, source, hub_id, f"no {' or '.join(filenames)} in {hub_id}")

    def load_into(self, model: torch.nn.Module, checkpoint: str | None, name: str = "", source: str = "",
                  arch: str = "", trust: bool = False) -> LoadReport:
        """Load via ``timm.models.load_pretrained``; check the result as strictly as StateDictFormat.

        A local ``.pth``/``.safetensors`` is read by :func:`read_checkpoint` (``trust`` as there) and handed to
        timm as a state dict; a local ``.npz`` goes to timm's JAX loader."""
        self.check_available(checkpoint, name, source, arch)
        overlay: dict[str, Any] = {}
        if checkpoint is not None and Path(checkpoint).suffix == ".npz":
            if not zipfile.is_zipfile(checkpoint):  # empty, truncated or not an archive at all
                raise unreadable(Path(checkpoint), "a NumPy .npz archive (Google's JAX ViT layout)",
                                  zipfile.BadZipFile("not a zip archive"), source)
            overlay = {"file": str(checkpoint), "custom_load": True}  # timm's _load_weights
        elif checkpoint is not None:
            overlay = {"state_dict": _timm_state_dict(reading.read_checkpoint(checkpoint, trust, source), checkpoint)}
        pretrained_cfg = {**model.pretrained_cfg, **overlay}
        repo, _ = self._hub_files(arch)
        where = str(checkpoint) if checkpoint is not None else f"hf-hub:{repo or arch}"
        # timm's create_model(pretrained=True) turns strict loading off whenever num_classes differs from the
        # pretrained config, and does not return what it skipped; loading into our own instance with a hook
        # lets us see every missing and unexpected key
        seen: list[Any] = []
        handle = model.register_load_state_dict_post_hook(lambda _m, incompatible: seen.append(incompatible))
        # timm's .npz loader copies tensor by tensor without load_state_dict: in-place writes bump each
        # tensor's version counter, so an unchanged counter means a tensor the file did not provide
        versions = {k: v._version for k, v in model.state_dict(keep_vars=True).items()}
        try:
            timm.models.load_pretrained(
                model, pretrained_cfg=pretrained_cfg, num_classes=getattr(model, "num_classes", 0),
                in_chans=model.patch_embed.proj.in_channels, filter_fn=checkpoint_filter_fn, strict=False,
                cache_dir=self.cache_dir)
        except KeyError as err:  # timm's .npz loader reads each expected array by name
            raise CheckpointMismatchError(
                f"checkpoint {where} lacks {err}, expected by timm's .npz loader for {arch}") from err
        except ValueError as err:  # timm's .npz loader: not a JAX/Flax ViT layout
            raise CheckpointMismatchError(f"checkpoint {where}: {err}") from err
        except RuntimeError as err:  # size mismatches from load_state_dict / the .npz loader
            message = f"checkpoint {where} does not fit {model_text(name, arch)}: {err}"
            raise CheckpointMismatchError(message) from err
        except OSError as err:  # hub errors (offline, not cached, no network) are OSErrors
            if checkpoint is not None:
                raise
            raise self._hub_error(name, arch, source, repo, str(err).splitlines()[0]) from err
        finally:
            handle.remove()

        dropped: Counter[str] = Counter()
        unexpected = []
        for incompatible in seen:
            for key in incompatible.unexpected_keys:
                rule = next((r for r in self._drop if r.search(key)), None)
                if rule is None:
                    unexpected.append(key)
                else:
                    dropped[rule.pattern] += 1
        unwritten = [k for k, v in model.state_dict(keep_vars=True).items() if v._version == versions[k]]
        missing = sorted({k for inc in seen for k in inc.missing_keys} | set(unwritten))
        hint = (f"  format: TimmPretrained(drop={self.drop}); keys that are legitimately unused need a "
                f"regex in backbone.format.drop.")
        check_compatible(model, where, missing, unexpected, [], hint, model_text(name, arch))
        return LoadReport(where, len(model.state_dict()) - len(missing), dict(dropped))


def _timm_state_dict(checkpoint: Any, file: str) -> dict[str, Any]:
    """What timm's own file loader takes from a checkpoint: the EMA weights, else ``state_dict``, else
    ``model``, else the whole mapping; DDP and torch.compile prefixes removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{file}: expected a dict of tensors, found {type(checkpoint).__name__}")
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return timm.models.clean_state_dict(dict(checkpoint))
