"""DualPrompt as the reference runs it: a G-prompt shared by all tasks (prefixes in the first blocks) and one
E-prompt per task (prefixes in the next blocks) chosen at test time by key-query matching; during training
task t uses E-prompt t, which starts as a copy of E-prompt t-1 (docs/algorithm.md#dualprompt)."""

from __future__ import annotations

import torch
from torch import nn

from norga.methods.key_query import KeyQueryLearner
from norga.models.attention import configure_prefix_attention
from norga.models.prompts import PromptPool, SharedPrefix
from norga.models.vit import check_layers


class DualPrompt(KeyQueryLearner):
    name = "dualprompt"

    def build_prompts(self) -> None:
        m = self.method
        e_layers = check_layers("method.prompt_layers", m.prompt_layers, self.backbone)
        g_layers = check_layers("method.g_prompt_layers", m.g_prompt_layers, self.backbone)
        both = sorted(set(e_layers) & set(g_layers))
        if both:
            raise ValueError(f"blocks {both} are in both method.g_prompt_layers {g_layers} and method.prompt_layers "
                             f"{e_layers}: a block takes the G-prompt or an E-prompt, not both")
        self.prompts = PromptPool(e_layers, self.pool_size, m.prompt_length, self.heads, self.head_dim,
                                  layout=m.prefix_layout).to(self.device)
        self.g_prompt = (SharedPrefix(g_layers, m.g_prompt_length, self.heads, self.head_dim).to(self.device)
                         if g_layers else None)
        # in the reference layout a sample's features depend on its batch: evaluate batch by batch
        self.eval_cacheable = m.prefix_layout == "per_sample"
        configure_prefix_attention(self.backbone, self.cfg.train.attention, self.device)

    def modules(self) -> dict[str, nn.Module]:
        modules = super().modules()
        if self.g_prompt is not None:
            modules["g_prompt"] = self.g_prompt
        return modules

    def prefixes(self, ids: torch.Tensor) -> dict:
        prefixes = self.prompts.prefixes_for_ids(ids)
        if self.g_prompt is not None:
            prefixes.update(self.g_prompt.prefixes(len(ids)))
        return prefixes

    def prompted_features(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with self.amp():
            return self._vit(self.backbone, x, self.prefixes(ids)).float()

    def prompt_tensors(self, ids: tuple[int, ...]) -> list[torch.Tensor | None]:
        g = self.g_prompt.prompts if self.g_prompt is not None else None
        return [self.prompts.prompts[:, :, list(ids)], g]

    def copy_prompts(self, src: slice, dst: slice) -> None:
        with torch.no_grad():
            self.prompts.prompts[:, :, dst] = self.prompts.prompts[:, :, src]
