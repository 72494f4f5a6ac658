"""Backbone weights: build the timm ViT named by a ``conf/backbone`` node and load its pre-trained weights
strictly.

A checkpoint file is described declaratively by its *format* (the node's ``format``, instantiated by Hydra):

* :class:`StateDictFormat` -- a PyTorch/safetensors file: which entry holds the weights (``nesting_key``),
  which name prefix to strip, which keys are legitimately unused (``drop``) and optional regex renames.
  After mapping, every tensor of the model must be present with the right shape and nothing may be left
  over; otherwise :class:`CheckpointMismatchError` lists what is missing, unexpected and mis-shaped.
* :class:`TimmPretrained` -- timm's own pretrained machinery (Hugging Face hub cache, or a local
  ``.npz``/``.pth``/``.safetensors`` given as ``backbone.checkpoint``), checked just as strictly.

The reference code kept only checkpoint keys that happened to match the model, so a renamed checkpoint
silently trained on random weights (docs/algorithm.md#d9-silent-checkpoint-mismatch); here a mismatch stops the run.

Files are read with ``torch.load(weights_only=True)``: a file that needs other pickled objects is refused
(:class:`UntrustedCheckpointError`) unless the node sets ``trust_checkpoint: true``; a damaged one raises
:class:`CheckpointReadError` naming it.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from norga.errors import NorgaError

log = logging.getLogger(__name__)

_SHOW = 10  # keys listed per category in an error message; the rest are counted


class CheckpointNotFoundError(FileNotFoundError, NorgaError):
    """A backbone's pre-trained weights are not on this machine (path and public source in the message)."""

    def __init__(self, message: str, path: str | None = None, source: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.source = source


class CheckpointMismatchError(RuntimeError, NorgaError):
    """A checkpoint does not provide exactly the backbone's tensors (file, keys and shapes in the message)."""


class CheckpointReadError(RuntimeError, NorgaError):
    """A checkpoint file is there but cannot be read as a checkpoint (file, reason and fix in the message)."""


class UntrustedCheckpointError(CheckpointReadError):
    """A checkpoint needs arbitrary pickled objects; read only with ``backbone.trust_checkpoint=true``."""


@dataclass
class LoadReport:
    """What a load did: ``dropped`` counts the keys each drop rule removed."""

    file: str
    loaded: int
    dropped: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # top-level entries outside the nesting key
    resampled: list[str] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        rules = ", ".join(f"{rule!r}: {n}" for rule, n in self.dropped.items())
        text = f"loaded {self.loaded} tensors from {self.file}; dropped {self.n_dropped} keys by rule"
        text += f" ({rules})" if rules else ""
        if self.ignored:
            text += f"; ignored top-level entries: {', '.join(self.ignored)}"
        if self.resampled:
            text += f"; resampled: {', '.join(self.resampled)}"
        return text


_TORCH_FILE = "a torch.save file (zip archive or legacy pickle) holding the weights"
_TRUST_KEY = "backbone.trust_checkpoint=true"


def _reason(err: BaseException, path: Path) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _unreadable(path: Path, expected: str, err: BaseException, source: str) -> CheckpointReadError:
    where = f"download it again from {source}" if source else "download it again"
    return CheckpointReadError(
        f"checkpoint {path} cannot be read ({_reason(err, path)}).\n"
        f"  expected {expected}; the file is truncated, damaged or something else (a saved HTML error page, "
        f"say).\n  {where}, or point backbone.checkpoint at the right file.")


def _pickled_objects(err: pickle.UnpicklingError, path: Path) -> list[str]:
    """The globals a ``weights_only`` load refused, or [] if it failed for another reason (a damaged file)."""
    refused = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    if not refused:
        return []
    try:  # the complete list, where torch can tell without unpickling (zip archives)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        return [g for g in found if g != "argparse.Namespace"] or refused
    except Exception:  # legacy pickles and older torch: the first refused global is all there is
        return refused


def read_checkpoint(path: str | Path, trust: bool = False, source: str = "") -> Any:
    """The object stored in a ``.safetensors`` or ``torch.save`` file, on the CPU.

    ``torch.load`` runs with ``weights_only=True`` (tensors, plain containers, numbers, strings; plus
    ``argparse.Namespace``, which iBOT's full checkpoint stores its ``args`` as). A file that needs any other
    pickled object raises :class:`UntrustedCheckpointError`: unpickling it could run code stored in the file.
    ``trust=True`` (``backbone.trust_checkpoint=true``) reads it with ``weights_only=False`` instead, never
    silently. A damaged or foreign file raises :class:`CheckpointReadError` naming it; ``source`` (where the
    file comes from) goes into that message.
    """
    path = Path(path)
    if path.suffix == ".npz":
        raise CheckpointMismatchError(
            f"{path}: .npz (JAX) checkpoints are read by timm's own loader; use format TimmPretrained")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error, or OSError/ValueError, on a bad header
            raise _unreadable(path, "a .safetensors file", err, source) from err
    if trust:
        log.warning("%s: read with torch.load(weights_only=False) because %s; this runs any code stored in "
                    "the file", path, _TRUST_KEY)
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        objects = [] if trust else _pickled_objects(err, path)
        if objects:
            raise UntrustedCheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors and plain containers "
                f"({', '.join(objects)}); unpickling them can run code stored in the file, so backbone weights "
                f"are read with torch.load(weights_only=True) only.\n"
                f"  if the file comes from a source you trust, allow it with {_TRUST_KEY};\n"
                f"  or save just its state dict (torch.save or .safetensors) and point backbone.checkpoint at "
                f"that file.") from None
        raise _unreadable(path, _TORCH_FILE, err, source) from err
    except Exception as err:  # EOFError, IndexError, RuntimeError, ...: whatever torch trips on in a bad file
        raise _unreadable(path, _TORCH_FILE, err, source) from err


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_SHOW])
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def _mismatch_message(file: str, model: torch.nn.Module, missing: list[str], unexpected: list[str],
                      shapes: list[str], hint: str, what: str) -> str:
    parts = [f"checkpoint {file} does not match {what or 'the backbone'} "
             f"({type(model).__name__}, {len(model.state_dict())} tensors):"]
    if missing:
        parts.append(_listing("missing: expected by the model, absent after mapping", missing))
    if unexpected:
        parts.append(_listing("unexpected: not in the model and matched by no drop rule", unexpected))
    if shapes:
        parts.append(_listing("shape mismatch", shapes))
    parts.append(hint)
    return "\n".join(parts)


def _check_compatible(model: torch.nn.Module, file: str, missing: list[str], unexpected: list[str],
                      shapes: list[str], hint: str, what: str = "") -> None:
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(_mismatch_message(file, model, missing, unexpected, shapes, hint, what))


def _what(name: str, arch: str) -> str:
    return f"backbone {name!r} [{arch}]" if name else arch


def _require_file(checkpoint: str | None, name: str, source: str) -> None:
    if checkpoint is None:
        raise CheckpointNotFoundError(
            f"backbone {name!r} loads its weights from a file, but backbone.checkpoint is not set.\n"
            f"  public source: {source}\n"
            f"  pass backbone.checkpoint=/path/to/file, or backbone.pretrained=false for random weights.",
            None, source)
    if not Path(checkpoint).is_file():
        raise CheckpointNotFoundError(
            f"backbone {name!r}: checkpoint not found at {checkpoint}\n"
            f"  public source: {source}\n"
            f"  download it to that path (its directory is paths.checkpoint_dir), or pass "
            f"backbone.checkpoint=/path/to/file; backbone.pretrained=false builds random weights.",
            checkpoint, source)


@dataclass
class StateDictFormat:
    """How a ``torch.save``/safetensors checkpoint maps onto timm's ViT names.

    Each key of the nested state dict is, in order: dropped if a ``drop`` regex matches it (searched in the
    file's own name); otherwise stripped of ``strip_prefix`` (a key without the prefix is an error); then
    rewritten by each ``rename`` regex in turn. ``nesting_key`` names the entry holding the weights (a
    list: the first one present), None for a file that is the state dict itself.
    """

    nesting_key: str | list[str] | None = None
    strip_prefix: str = ""
    drop: list[str] = field(default_factory=list)
    rename: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hydra may hand over OmegaConf containers; compile once so a bad regex fails at build time
        self.drop = list(self.drop or [])
        self.rename = dict(self.rename or {})
        self._drop = [re.compile(p) for p in self.drop]
        self._rename = [(re.compile(p), r) for p, r in self.rename.items()]

    def describe(self) -> str:
        return (f"nesting_key={self.nesting_key!r}, strip_prefix={self.strip_prefix!r}, drop={self.drop}, "
                f"rename={self.rename}")

    def select(self, checkpoint: Any, file: str) -> tuple[Mapping[str, Any], list[str]]:
        """The nested state dict and the top-level entries left aside."""
        if not isinstance(checkpoint, Mapping):
            raise CheckpointMismatchError(f"{file}: expected a dict, found {type(checkpoint).__name__}")
        if self.nesting_key is None:
            return checkpoint, []
        candidates = [self.nesting_key] if isinstance(self.nesting_key, str) else list(self.nesting_key)
        for key in candidates:
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                return checkpoint[key], [str(k) for k in checkpoint if k != key]
        raise CheckpointMismatchError(
            f"{file}: none of the nesting keys {candidates} holds a state dict; the file's top-level keys "
            f"are {list(checkpoint)[:20]}. Set backbone.format.nesting_key."
        )

    def map_keys(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, int],
                                                          list[str]]:
        """``(mapped, origin, dropped, lacking_prefix)``: tensors by timm name, each one's file name, the
        number of keys each drop rule removed, and the undropped keys without ``strip_prefix``."""
        mapped: dict[str, Any] = {}
        origin: dict[str, str] = {}
        dropped: Counter[str] = Counter()
        lacking: list[str] = []
        for key, value in state.items():
            rule = next((r for r in self._drop if r.search(key)), None)
            if rule is not None:
                dropped[rule.pattern] += 1
                continue
            if not key.startswith(self.strip_prefix):
                lacking.append(key)
                continue
            name = key[len(self.strip_prefix):]
            for pattern, replacement in self._rename:
                name = pattern.sub(replacement, name)
            if name in mapped:
                raise CheckpointMismatchError(f"keys {origin[name]!r} and {key!r} both map to {name!r}")
            mapped[name], origin[name] = value, key
        return mapped, origin, dict(dropped), lacking

    def check_available(self, checkpoint: str | None, name: str = "", source: str = "",
                        arch: str = "") -> None:
        """Raise :class:`CheckpointNotFoundError` unless ``checkpoint`` is an existing file."""
        _require_file(checkpoint, name, source)

    def load_into(self, model: torch.nn.Module, checkpoint: str | None, name: str = "", source: str = "",
                  arch: str = "", trust: bool = False) -> LoadReport:
        """Load ``checkpoint`` into ``model`` (every tensor, exact shapes) and report what was dropped.

        ``trust``: read a file that needs arbitrary pickled objects (see :func:`read_checkpoint`)."""
        self.check_available(checkpoint, name, source)
        file = str(checkpoint)
        state, ignored = self.select(read_checkpoint(file, trust, source), file)
        mapped, origin, dropped, lacking = self.map_keys(state)
        expected = model.state_dict()

        def named(k: str) -> str:
            return k if origin[k] == k else f"{k} (file: {origin[k]})"

        def mismatch(k: str, found: Any) -> str:
            return f"{named(k)}: expected {_shape(expected[k])}, found {_shape(found)}"

        missing = [k for k in expected if k not in mapped]
        unexpected = [f"{k} (no prefix {self.strip_prefix!r})" for k in lacking]
        unexpected += [named(k) for k in mapped if k not in expected]
        tensors = {k: v for k, v in mapped.items() if k in expected}
        # pos_embed and the patch embedding may legitimately differ before timm's filter (resolution
        # resampling, linear -> conv reshape): their shapes are checked after it
        deferred = {"pos_embed", "patch_embed.proj.weight"}
        shapes = [mismatch(k, v) for k, v in tensors.items()
                  if not isinstance(v, torch.Tensor) or (k not in deferred and v.shape != expected[k].shape)]
        hint = (f"  format: {self.describe()}\n  fix the file or backbone.format; keys that are legitimately "
                f"unused need a regex in backbone.format.drop.")
        if len(missing) == len(expected):
            hint += f"\n  no model key was found; the file's first keys are: {list(state)[:8]}"
        _check_compatible(model, file, missing, unexpected, shapes, hint, _what(name, arch))

        try:  # timm's reshapes and resampling; names are already timm's
            filtered = checkpoint_filter_fn(dict(tensors), model)
        except (RuntimeError, ValueError, AssertionError) as err:
            message = f"{file}: timm's checkpoint_filter_fn failed: {err}\n{hint}"
            raise CheckpointMismatchError(message) from err
        resampled = []
        for k in sorted(deferred & tensors.keys()):
            before, after = tensors[k], filtered.get(k)
            if after is not None and after.shape == expected[k].shape and (
                    before.shape == after.shape
                    or k == "pos_embed"  # trained at another resolution: resampled to the model's grid
                    or before.numel() == after.numel()):  # linear patch embedding reshaped to a conv
                if before.shape != after.shape:
                    resampled.append(f"{k} {_shape(before)} -> {_shape(after)}")
                continue
            shapes.append(mismatch(k, before))  # e.g. a kernel for another patch size: another architecture
        _check_compatible(model, file, [k for k in expected if k not in filtered], [], shapes, hint,
                          _what(name, arch))
        if resampled:
            log.warning("%s: adapted by timm's checkpoint_filter_fn: %s", file, ", ".join(resampled))
        model.load_state_dict(filtered, strict=True)
        return LoadReport(file, len(filtered), dropped, ignored, resampled)


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
            _require_file(checkpoint, name, source)
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
                raise _unreadable(Path(checkpoint), "a NumPy .npz archive (Google's JAX ViT layout)",
                                  zipfile.BadZipFile("not a zip archive"), source)
            overlay = {"file": str(checkpoint), "custom_load": True}  # timm's _load_weights
        elif checkpoint is not None:
            overlay = {"state_dict": _timm_state_dict(read_checkpoint(checkpoint, trust, source), checkpoint)}
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
            message = f"checkpoint {where} does not fit {_what(name, arch)}: {err}"
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
        _check_compatible(model, where, missing, unexpected, [], hint, _what(name, arch))
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


def _resolve_format(cfg: DictConfig) -> StateDictFormat | TimmPretrained:
    fmt = cfg.get("format")
    if fmt is None:
        return TimmPretrained()
    if isinstance(fmt, DictConfig | Mapping):
        return instantiate(fmt, _convert_="all")
    return fmt


def _checkpoint_path(cfg: DictConfig) -> str | None:
    path = cfg.get("checkpoint")
    # relative paths are relative to where the run was launched, even if Hydra changed directory
    return to_absolute_path(str(path)) if path else None


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def check_checkpoint_available(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointNotFoundError` (with the expected path and the public source) when ``cfg``
    asks for pre-trained weights that are not on this machine. Cheap: call it before loading any data."""
    cfg = _as_config(cfg)
    if not cfg.get("pretrained", True):
        return
    _resolve_format(cfg).check_available(_checkpoint_path(cfg), cfg.name, cfg.get("source", ""), cfg.arch)


def build_backbone(cfg: DictConfig | Mapping[str, Any], **timm_kwargs: Any) -> VisionTransformer:
    """The timm ViT described by a ``conf/backbone`` node, with its pre-trained weights loaded strictly.

    ``timm_kwargs`` go to ``timm.create_model`` after ``cfg.model_kwargs`` (the framework passes
    ``block_fn`` and ``num_classes=0``). With ``cfg.pretrained`` false no file is read (random weights).
    ``cfg.trust_checkpoint`` allows a file that needs arbitrary pickled objects (see :func:`read_checkpoint`).
    Raises :class:`CheckpointNotFoundError`, :class:`CheckpointReadError` (:class:`UntrustedCheckpointError`)
    or :class:`CheckpointMismatchError`.
    """
    cfg = _as_config(cfg)
    model_kwargs = cfg.get("model_kwargs")
    kwargs = dict(OmegaConf.to_container(model_kwargs, resolve=True)) if model_kwargs is not None else {}
    img_size = cfg.get("img_size")
    if img_size is not None and kwargs.setdefault("img_size", img_size) != img_size:
        raise ValueError(f"backbone {cfg.name!r}: img_size {img_size} and model_kwargs.img_size "
                         f"{kwargs['img_size']} disagree")
    kwargs.update(timm_kwargs)
    if not cfg.get("pretrained", True):
        log.info("backbone %s: %s with random weights (backbone.pretrained=false)", cfg.name, cfg.arch)
        return timm.create_model(cfg.arch, pretrained=False, **kwargs)

    fmt = _resolve_format(cfg)
    checkpoint, source = _checkpoint_path(cfg), cfg.get("source", "")
    fmt.check_available(checkpoint, cfg.name, source, cfg.arch)  # before building: fail fast
    model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    trust = bool(cfg.get("trust_checkpoint", False))
    report = fmt.load_into(model, checkpoint, cfg.name, source, cfg.arch, trust=trust)
    log.info("backbone %s (%s): %s", cfg.name, cfg.arch, report.summary())
    return model
