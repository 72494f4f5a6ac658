"""S-Prompt++ as the reference repository runs it: DualPrompt without the G-prompt, with task prefixes in
blocks 0-4 (not the original S-Prompts: no k-means, no KNN; docs/algorithm.md#s-prompt)."""

from __future__ import annotations

from norga.methods.dualprompt import DualPrompt


class SPromptPP(DualPrompt):
    name = "sprompt"
