"""L2P (Learning to Prompt) as the reference runs it: a pool of prompt-tuning prompts put in front of the token
sequence, chosen per sample by key-query matching, the whole training batch using its most frequent choices
(docs/algorithm.md#l2p)."""

from __future__ import annotations

import torch

from norga.methods.key_query import KeyQueryLearner
from norga.models.prompts import TokenPromptPool
from norga.models.vit import check_layers


class L2P(KeyQueryLearner):
    name = "l2p"

    def build_prompts(self) -> None:
        m = self.method
        layers = check_layers("method.prompt_layers", m.prompt_layers, self.backbone)
        self.prompts = TokenPromptPool(layers, self.pool_size, m.prompt_length, self.dim).to(self.device)

    def prompted_features(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with self.amp():
            return self._vit(self.backbone, x, tokens=self.prompts.tokens_for_ids(ids)).float()

    def prompt_tensors(self, ids: tuple[int, ...]) -> list[torch.Tensor | None]:
        return [self.prompts.prompts[:, list(ids)]]

    def copy_prompts(self, src: slice, dst: slice) -> None:
        with torch.no_grad():
            self.prompts.prompts[:, dst] = self.prompts.prompts[:, src]
