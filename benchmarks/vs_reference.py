"""norga against the authors' code: the same model on the same random weights and batch, outputs compared, the
training step and the evaluation forward timed alternately in one process on whatever device is present.

    python benchmarks/vs_reference.py --reference-dir MoE_PromptCL   # NoRGa, HiDe-Prompt, L2P, DualPrompt, S-Prompt++
    python benchmarks/vs_reference.py --reference-dir CODA-Prompt    # CODA-Prompt

The reference checkout is the user's (``git clone`` of the authors' repository); norga never imports it
otherwise, and this script only puts it on ``sys.path`` for its own process. Which methods it runs follows from
the repository it is given. For each method:

* norga's learner is built as ``run.py`` builds it (Hydra overrides after the options, ``fidelity=reference``
  first: fp32 and the reference prefix layout, so the two codes compute the same thing), on a synthetic
  benchmark, with a randomly initialised backbone (``backbone.pretrained=false``);
* the authors' model is built from their classes with the same geometry, and every weight is copied from
  norga's (backbone, prompts, gate parameters, keys, heads);
* outputs: the logits of the evaluation forward (the same prompts for both: norga's selection) must agree to
  ``--atol`` (relative to the largest logit); the script fails otherwise;
* timing: ``train step`` = the prompted forward, the masked cross-entropy (minus the pull term where the method
  has one), backward and an Adam step on the trainable parameters (norga: the learner's own training loss,
  ``benchmark_step``); ``eval forward`` = query (where the method has one) and prompted forward without
  gradient. The two codes alternate iteration by iteration and each reports its median, so a load change hits
  both alike. The last line is ``ratio <reference / norga train-step time>x`` (the geometric mean over the methods).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import nn

from norga.models.vit import build_frozen_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import SyntheticBenchmark, compose_config, sync  # noqa: E402  (benchmarks/step.py)

REPOSITORIES = {
    "MoE_PromptCL": ("https://github.com/Minhchuyentoancbn/MoE_PromptCL", "vits/norga_prompt_vision_transformer.py",
                     ("norga", "hide", "l2p", "dualprompt", "sprompt")),
    "CODA-Prompt": ("https://github.com/GT-RIPL/CODA-Prompt", "models/zoo.py", ("coda",)),
}
WHAT_TO_FETCH = """benchmarks/vs_reference.py compares norga with the authors' code, which norga does not ship.
Fetch it:

  git clone https://github.com/Minhchuyentoancbn/MoE_PromptCL   # NoRGa, HiDe-Prompt, L2P, DualPrompt, S-Prompt++
  git clone https://github.com/GT-RIPL/CODA-Prompt              # CODA-Prompt

then run, once per checkout:

  python benchmarks/vs_reference.py --reference-dir MoE_PromptCL
  python benchmarks/vs_reference.py --reference-dir CODA-Prompt

(they need only torch and timm, which norga's environment has)."""


# ---- the authors' models --------------------------------------------------------------------------------------
@contextlib.contextmanager
def timm_registry_kept():
    """The authors' modules register their own functions under timm's model names (vit_base_patch16_224, ...):
    put timm's registry back afterwards, so norga's backbones stay timm's."""
    from timm.models import _registry

    saved = {name: copy.copy(value) for name, value in vars(_registry).items()
             if name.startswith("_") and isinstance(value, dict | set)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, value in saved.items():
            current = getattr(_registry, name)
            current.clear()
            current.update(value)


@contextlib.contextmanager
def cuda_calls_stay_on(device: torch.device):
    """CODA-Prompt's ViT moves tensors with hard-coded ``.cuda()`` calls; without a GPU those become no-ops here."""
    if device.type == "cuda":
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self.clone()  # a copy, as a real device move
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def geometry(backbone) -> dict:
    patch = backbone.patch_embed.patch_size
    return {"img_size": backbone.patch_embed.img_size[0], "patch_size": patch[0] if isinstance(patch, tuple) else patch,
            "embed_dim": backbone.embed_dim, "depth": len(backbone.blocks),
            "num_heads": backbone.blocks[0].attn.num_heads, "mlp_ratio": backbone.blocks[0].mlp.fc1.out_features
            / backbone.embed_dim}


def load_backbone(model: nn.Module, backbone: nn.Module) -> None:
    """Copy norga's frozen backbone (timm names, as the authors' copies of timm's ViT) into ``model``."""
    missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
    if unexpected:
        raise RuntimeError(f"the reference model has no parameters {unexpected[:5]}: is this the right checkout?")
    stray = [k for k in missing if k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed", "norm."))]
    if stray:
        raise RuntimeError(f"backbone weights not copied into the reference model: {stray[:5]}")


def copy_head(head: nn.Module, learner_head: nn.Module) -> None:
    linear = learner_head if isinstance(learner_head, nn.Linear) else learner_head[-1]
    head.load_state_dict(linear.state_dict())


class MoEPromptCL:
    """The NoRGa authors' repository (itself derived from HiDe-Prompt): its ViTs and prompt modules."""

    def __init__(self, root: Path) -> None:
        with timm_registry_kept():
            self.norga_vit = importlib.import_module("vits.norga_prompt_vision_transformer")
            self.hide_vit = importlib.import_module("vits.hide_prompt_vision_transformer")
            self.dp_vit = importlib.import_module("vits.dp_vision_transformer")

    def build(self, method: str, learner, backbone, num_classes: int) -> Callable:
        m, geo = learner.method, geometry(backbone)
        common = dict(**geo, num_classes=num_classes, prompt_pool=True, embedding_key="cls", prompt_init="uniform",
                      prompt_key_init="uniform", head_type="token", use_e_prompt=True, same_key_value=False,
                      batchwise_prompt=False)
        if method in ("norga", "hide"):
            kwargs = dict(common, prompt_length=m.prompt_length, prompt_key=False,
                          pool_size=learner.benchmark.num_tasks, top_k=1, use_prompt_mask=True, use_g_prompt=False,
                          g_prompt_length=0, g_prompt_layer_idx=[], e_prompt_layer_idx=list(m.prompt_layers),
                          use_prefix_tune_for_e_prompt=True)
            if method == "norga":
                model = self.norga_vit.VisionTransformer(**kwargs, gate_act=m.gate)
            else:
                model = self.hide_vit.VisionTransformer(**kwargs)
            load_backbone(model, backbone)
            with torch.no_grad():
                model.e_prompt.prompt.copy_(learner.prompts.prompts)
                if method == "norga":
                    model.e_prompt.act_scale.copy_(learner.prompts.gate_params)
            copy_head(model.head, learner.head)
            return ReferenceRun(model, None, uses_query=False)
        g_layers = list(m.get("g_prompt_layers", []))
        kwargs = dict(common, prompt_length=m.prompt_length, prompt_key=True, pool_size=learner.pool_size,
                      top_k=learner.top_k, use_prompt_mask=bool(m.prompt_mask), use_g_prompt=bool(g_layers),
                      g_prompt_length=m.get("g_prompt_length"), g_prompt_layer_idx=g_layers,
                      use_prefix_tune_for_g_prompt=True, e_prompt_layer_idx=list(m.prompt_layers),
                      use_prefix_tune_for_e_prompt=method != "l2p")
        model = self.dp_vit.VisionTransformer(**kwargs)
        original = self.dp_vit.VisionTransformer(**geo, num_classes=num_classes)
        for net in (model, original):
            load_backbone(net, backbone)
        with torch.no_grad():
            model.e_prompt.prompt.copy_(learner.prompts.prompts)
            model.e_prompt.prompt_key.copy_(learner.keys.vectors)
            if g_layers:
                model.g_prompt.copy_(learner.g_prompt.prompts)
        copy_head(model.head, learner.head)
        return ReferenceRun(model, original, uses_query=True, pull=float(m.pull_coeff))


class ReferenceRun:
    """The authors' forward as their engines call it: evaluation with a given prompt (NoRGa/HiDe-Prompt: the TII's
    choice; the baselines: their own key matching on the original model's class token), training with the task's
    prompt mask."""

    def __init__(self, model: nn.Module, original: nn.Module | None, uses_query: bool, pull: float = 0.0) -> None:
        self.model, self.original, self.uses_query, self.pull = model, original, uses_query, pull

    trained = ("e_prompt.", "g_prompt", "head.")  # their trainers freeze the rest (args.freeze)

    def to(self, device):
        self.model.to(device)
        if self.original is not None:
            self.original.to(device).eval().requires_grad_(False)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(self.trained))
        return self

    def params(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n.startswith(self.trained)]

    def eval_logits(self, x: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        if self.uses_query:
            query = self.original(x)["pre_logits"]
            return self.model(x, task_id=-1, cls_features=query)["logits"]
        return self.model(x, prompt_id=prompt_ids)["logits"]

    def train_loss(self, x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.uses_query:
            with torch.no_grad():
                query = self.original(x)["pre_logits"]
            out = self.model(x, task_id=0, cls_features=query, train=True)
        else:
            out = self.model(x, task_id=0, train=True)
        logits = out["logits"].masked_fill(~allowed, float("-inf"))
        loss = F.cross_entropy(logits, y)
        if self.pull and "reduce_sim" in out:
            loss = loss - self.pull * out["reduce_sim"]
        return loss


class CODAPromptRepo:
    """CODA-Prompt's repository: its ViT (``models/vit.py``), ``CodaPrompt`` and ``ViTZoo`` (``models/zoo.py``)."""

    def __init__(self, root: Path) -> None:
        with timm_registry_kept():
            self.zoo = importlib.import_module("models.zoo")
            self.vit = importlib.import_module("models.vit")

    def build(self, method: str, learner, backbone, num_classes: int):
        geo, m = geometry(backbone), learner.method
        if list(m.prompt_layers) != [0, 1, 2, 3, 4]:
            raise ValueError("the authors' CodaPrompt prompts blocks 0-4 only: use method.prompt_layers=[0,1,2,3,4]")
        vit = self.vit.VisionTransformer(img_size=geo["img_size"], patch_size=geo["patch_size"],
                                         embed_dim=geo["embed_dim"], depth=geo["depth"], num_heads=geo["num_heads"],
                                         mlp_ratio=geo["mlp_ratio"], ckpt_layer=0, drop_path_rate=0)
        load_backbone(vit, backbone)
        dim = geo["embed_dim"]
        # ViTZoo's constructor downloads timm's ImageNet weights (pt=True) or fails (pt=False): assemble the same
        # object around this ViT instead, so its own forward runs
        model = self.zoo.ViTZoo.__new__(self.zoo.ViTZoo)
        nn.Module.__init__(model)
        model.prompt_flag, model.task_id = "coda", None
        model.prompt = self.zoo.CodaPrompt(dim, learner.benchmark.num_tasks, [m.pool_size, m.prompt_length, 0.0],
                                           key_dim=dim)
        model.feat, model.last = vit, nn.Linear(dim, num_classes)
        with torch.no_grad():
            for i, layer in enumerate(learner.prompt.layers):
                getattr(model.prompt, f"e_p_{layer}").copy_(learner.prompt.components[i])
                getattr(model.prompt, f"e_k_{layer}").copy_(learner.prompt.keys[i])
                getattr(model.prompt, f"e_a_{layer}").copy_(learner.prompt.attention[i])
        model.prompt.task_count = learner.prompt.tasks_started - 1
        model.last.load_state_dict(learner.head.state_dict())
        return CODARun(model)


class CODARun:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.uses_query = model, True

    trained = ("prompt.", "last.")  # the authors' learner optimises these only

    def to(self, device):
        self.model.to(device)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith(self.trained))
        return self

    def params(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n.startswith(self.trained)]

    def eval_logits(self, x: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train_loss(self, x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(x, train=True)
        return F.cross_entropy(logits.masked_fill(~allowed, float("-inf")), y)


# ---- one method -----------------------------------------------------------------------------------------------
def build_norga(method: str, args, extra: list[str], device: torch.device):
    overrides = ["fidelity=reference", f"method={method}", f"backbone={args.backbone}", "backbone.pretrained=false",
                 "logger=none", f"train.batch_size={args.batch}", f"dataset.num_tasks={args.tasks}",
                 f"seed={args.seed}", *extra]
    if method == "coda":
        overrides.append(f"method.pool_size={args.tasks * args.coda_per_task}")
    cfg, _ = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    backbone = build_frozen_backbone(cfg.backbone)
    benchmark = SyntheticBenchmark(cfg.dataset.num_tasks, args.classes_per_task)
    learner = get_class(cfg.method._target_)(cfg, backbone, benchmark, device)
    return cfg, learner, backbone, benchmark, device


def randomise(learner, seed: int) -> None:
    """Learned values instead of inits (a zero head or identical prompts would hide a mismatch)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in learner.modules().values():
            for p in module.parameters():
                if p.dim() > 0 and p.requires_grad:
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) * p.abs().mean().clamp(
                        min=0.02) * 2)


def run_method(method: str, repo, args, extra: list[str], device: torch.device) -> dict:
    cfg, learner, backbone, benchmark, device = build_norga(method, args, extra, device)
    step = learner.benchmark_step(0)  # CODA-Prompt draws task 0's components here
    randomise(learner, args.seed)
    learner.eval_mode()
    ref = repo.build(method, learner, backbone, benchmark.num_classes).to(device)
    ref.model.eval()
    gen = torch.Generator().manual_seed(args.seed)
    size = cfg.backbone.img_size
    x = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    classes = benchmark.task_classes[0]
    y = torch.as_tensor(classes)[torch.randint(0, len(classes), (args.batch,), generator=gen)].to(device)
    allowed = benchmark.class_mask(0).to(device)
    last = 0  # one task trained: the rows a first evaluation uses

    with torch.no_grad():
        query = learner.query(x)
        selection = learner.select(query, last)
        if selection is not None and not ref.uses_query:
            # NoRGa/HiDe-Prompt: the TII's choice is an input to the prompted forward; spread it over the prompts
            selection = torch.arange(args.batch, device=device).remainder(benchmark.num_tasks).unsqueeze(1)
        ours = learner.head(learner.features(x, selection, query)).float()
        theirs = ref.eval_logits(x, selection).float()
    scale = ours.abs().max().item()
    diff = (ours - theirs).abs().max().item() / max(scale, 1e-12)

    loss_fn, params = step
    norga_opt = torch.optim.Adam(params, lr=1e-4)
    ref_params = ref.params()
    ref_opt = torch.optim.Adam(ref_params, lr=1e-4)
    clip = cfg.train.clip_grad

    def norga_train():
        loss = loss_fn(x, y)
        norga_opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        norga_opt.step()

    def ref_train():
        ref.model.train()
        loss = ref.train_loss(x, y, allowed)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(ref_params, clip)
        ref_opt.step()
        ref.model.eval()

    def norga_eval():
        with torch.no_grad():
            q = learner.query(x) if ref.uses_query else query  # NoRGa/HiDe-Prompt: the TII's query is cached
            learner.features(x, learner.select(q, last) if ref.uses_query and selection is not None else selection, q)

    def ref_eval():
        with torch.no_grad():
            ref.eval_logits(x, selection)

    timings = {}
    for kind, pair in (("train step", (ref_train, norga_train)), ("eval forward", (ref_eval, norga_eval))):
        for fn in pair:
            for _ in range(args.warmup):
                fn()
        times = ([], [])
        for _ in range(args.iters):
            for i, fn in enumerate(pair):
                sync(device)
                started = time.perf_counter()
                fn()
                sync(device)
                times[i].append(time.perf_counter() - started)
        timings[kind] = tuple(statistics.median(t) for t in times)
    return {"method": method, "diff": diff, "timings": timings, "device": device, "cfg": cfg}


def detect(root: Path):
    for name, (_, marker, methods) in REPOSITORIES.items():
        if (root / marker).is_file():
            return name, methods
    raise SystemExit(f"{root} is neither a MoE_PromptCL nor a CODA-Prompt checkout (no "
                     f"{' or '.join(m for _, m, _ in REPOSITORIES.values())}).\n\n{WHAT_TO_FETCH}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, help="a checkout of the authors' repository (MoE_PromptCL or "
                        "CODA-Prompt); without it the script says what to fetch")
    parser.add_argument("--methods", nargs="*", help="which of the repository's methods (default: all it has)")
    parser.add_argument("--backbone", default="sup21k", help="norga backbone config whose geometry both codes "
                        "use, randomly initialised (default sup21k: ViT-B/16; tiny: the embedded 32-px ViT)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--classes-per-task", type=int, default=10)
    parser.add_argument("--coda-per-task", type=int, default=10, help="CODA-Prompt components per task (tasks x "
                        "this must fit the backbone's width: at most 9 with --backbone tiny and 10 tasks)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |logit difference| / max |logit|")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for norga's side (after fidelity=reference)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reference_dir is None:
        print(WHAT_TO_FETCH)
        return 2
    root = args.reference_dir.expanduser().resolve()
    name, methods = detect(root)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(sys.stderr):  # their constructors print
        repo = MoEPromptCL(root) if name == "MoE_PromptCL" else CODAPromptRepo(root)
    chosen = args.methods or list(methods)
    unknown = sorted(set(chosen) - set(methods))
    if unknown:
        raise SystemExit(f"{name} has no {unknown}; it has {', '.join(methods)}")
    results = []
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for method in chosen:
        with contextlib.redirect_stdout(sys.stderr), cuda_calls_stay_on(device):
            results.append(run_method(method, repo, args, args.overrides, device))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    card = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"{name} vs norga | device {device}{card}{threads} | torch {torch.__version__} | backbone {args.backbone} "
          f"(random weights) | batch {args.batch} | fp32 | median of {args.iters}")
    print(f"{'method':11s} {'max |diff|/max|logit|':>22s} {'train ref s':>12s} {'train norga s':>14s} {'ratio':>7s} "
          f"{'eval ref s':>11s} {'eval norga s':>13s} {'ratio':>7s}")
    failed, ratios = [], []
    for r in results:
        (tr, tn), (er, en) = r["timings"]["train step"], r["timings"]["eval forward"]
        ok = r["diff"] <= args.atol
        failed += [] if ok else [r["method"]]
        ratios.append(tr / tn)
        print(f"{r['method']:11s} {r['diff']:>20.1e}{'  ' if ok else ' !'} {tr:>12.4f} {tn:>14.4f} {tr / tn:>6.2f}x "
              f"{er:>11.4f} {en:>13.4f} {er / en:>6.2f}x")
    if failed:
        print(f"outputs differ beyond --atol {args.atol:g}: {', '.join(failed)}")
        return 1
    print(f"ratio {math.exp(statistics.fmean(math.log(v) for v in ratios)):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
