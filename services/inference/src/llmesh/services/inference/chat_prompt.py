"""Chat messages → prompt text for a local model, split into template text (whose control tokens
such as `<start_of_turn>` are honoured) and message content (tokenized as plain text, so a caller
cannot forge turns or special tokens).

Two formats:
- the GGUF's own chat template (`tokenizer.chat_template`), when the file carries one;
- Gemma turns, the fallback: the bundled Gemma 3 270M GGUF carries no template, and
  llama-cpp-python would then fall back to a Llama-2 format the model was never trained on.
  System text is put before the next user turn, as Gemma's own template does (it has no system role).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llmesh.kit.chat import Message


@dataclass(frozen=True, slots=True)
class PromptPart:
    text: str
    trusted: bool  # template text: special-token markup in it is parsed as such


Prompt = tuple[PromptPart, ...]


class GemmaTurns:
    name = "gemma"

    def __init__(self, bos_text: str):
        self._bos = bos_text

    def render(self, messages: Sequence[Message]) -> Prompt:
        parts: list[PromptPart] = [PromptPart(self._bos, True)]
        system_prefix: list[str] = []
        for message in messages:
            if message.role == "system":
                system_prefix.append(message.content.strip())
                continue
            if message.role == "assistant" and system_prefix:
                self._turn(parts, "user", "\n\n".join(system_prefix))
                system_prefix = []
            if message.role == "user" and system_prefix:
                content = "\n\n".join([*system_prefix, message.content.strip()])
                system_prefix = []
            else:
                content = message.content.strip()
            self._turn(parts, "model" if message.role == "assistant" else "user", content)
        if system_prefix:
            self._turn(parts, "user", "\n\n".join(system_prefix))
        parts.append(PromptPart("<start_of_turn>model\n", True))
        return tuple(parts)

    @staticmethod
    def _turn(parts: list[PromptPart], role: str, content: str) -> None:
        parts.append(PromptPart(f"<start_of_turn>{role}\n", True))
        parts.append(PromptPart(content, False))
        parts.append(PromptPart("<end_of_turn>\n", True))


class TemplateError(ValueError):
    """The GGUF's chat template cannot be used."""


# Private-use characters: no template edits them, and they split the rendering back into parts.
_MARK = re.compile("\ue000(\\d+)\ue001")


class JinjaTemplate:
    """A Hugging Face style chat template, rendered with each message's content replaced by a
    marker; the markers are then swapped back as untrusted parts."""

    name = "gguf-template"

    def __init__(self, template: str, *, bos_text: str, eos_text: str):
        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.globals["raise_exception"] = raise_exception
        try:
            self._template = environment.from_string(template)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the GGUF's chat template does not parse: {exc}") from exc
        self._bos = bos_text
        self._eos = eos_text
        # Refuse at start-up a template that rewrites message content (its markers would vanish).
        self.render(
            [
                Message("system", "probe"),
                Message("user", "probe"),
                Message("assistant", "probe"),
                Message("user", "probe"),
            ]
        )

    def render(self, messages: Sequence[Message]) -> Prompt:
        marked = [{"role": m.role, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        try:
            text = self._template.render(
                messages=marked, bos_token=self._bos, eos_token=self._eos, add_generation_prompt=True
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the GGUF's chat template failed: {exc}") from exc
        parts: list[PromptPart] = []
        seen: set[int] = set()
        position = 0
        for match in _MARK.finditer(text):
            if match.start() > position:
                parts.append(PromptPart(text[position : match.start()], True))
            index = int(match.group(1))
            seen.add(index)
            parts.append(PromptPart(messages[index].content, False))
            position = match.end()
        if position < len(text):
            parts.append(PromptPart(text[position:], True))
        if any(m.role != "system" for i, m in enumerate(messages) if i not in seen):
            raise TemplateError("the GGUF's chat template dropped or rewrote message content")
        return tuple(parts)


PromptFormat = GemmaTurns | JinjaTemplate


def prompt_format(setting: str, gguf_template: str | None, *, bos_text: str, eos_text: str) -> PromptFormat:
    """The format `setting` (auto | gemma) selects for a model with `gguf_template`."""
    if setting == "auto" and gguf_template:
        return JinjaTemplate(gguf_template, bos_text=bos_text, eos_text=eos_text)
    return GemmaTurns(bos_text)
