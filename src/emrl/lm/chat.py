"""Chat-formatted prompts: TRL's conversational dataset format rendered by a chat template.

A user dataset is *conversational* when its rows carry messages (lists of
``{"role": ..., "content": ...}``) instead of a text prompt, in either of TRL's layouts:

* ``messages``: the whole conversation; a final ``assistant`` message is the
  demonstration (``completion``), the messages before it are the prompt;
* ``prompt`` as a list of messages (prompt-completion layout), with ``completion`` a
  text or a list of assistant messages.

The prompt fed to the model is the tokenizer's chat template applied to the prompt
messages with the generation prompt added (``apply_chat_template(...,
add_generation_prompt=True)``); completions stay plain text, so rewards (TRL signature)
score the completion text. A tokenizer without a chat template is an error.
"""

from __future__ import annotations

import json
from typing import Any

from emrl.errors import EmrlError

#: key holding the prompt messages of a conversational row (kept for reward functions).
PROMPT_MESSAGES = "prompt_messages"


def _as_list(v: Any) -> Any:
    return v.tolist() if type(v).__name__ == "ndarray" else v


def is_messages(v: Any) -> bool:
    v = _as_list(v)
    return (isinstance(v, list) and len(v) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in v))


def is_conversational(rows: list[dict]) -> bool:
    return any(is_messages(r.get("messages")) or is_messages(r.get("prompt")) for r in rows[:16])


def to_conversational(rows: list[dict], where: str) -> list[dict]:
    """Rows with ``prompt_messages``, a text ``completion`` when there is one, and ``prompt``
    a JSON key of the prompt messages (used to group/split rows until rendering)."""
    out = []
    for i, raw in enumerate(rows):
        r = dict(raw)
        comp = r.get("completion")
        if is_messages(r.get("prompt")):
            msgs = [dict(m) for m in _as_list(r["prompt"])]
        elif is_messages(r.get("messages")):
            msgs = [dict(m) for m in _as_list(r.pop("messages"))]
            if msgs[-1]["role"] == "assistant":
                last = msgs.pop()
                if comp is None:
                    comp = last["content"]
            if not msgs:
                raise EmrlError(f"dataset {where}: row {i} has only an assistant message, no prompt")
        else:
            raise EmrlError(
                f"dataset {where}: row {i} has neither a 'messages' list nor a 'prompt' list of "
                "{'role', 'content'} messages, but other rows are conversational")
        if is_messages(comp):
            comp = "".join(str(m["content"]) for m in _as_list(comp))
        if comp is not None:
            r["completion"] = str(comp)
        r[PROMPT_MESSAGES] = msgs
        r["prompt"] = json.dumps(msgs, sort_keys=True)
        out.append(r)
    return out


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat template applied to ``messages`` with the generation prompt, as text.

    A leading BOS written by the template is dropped when the tokenizer adds BOS itself
    (emrl encodes prompts with special tokens), so the model never sees two.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise EmrlError(
            f"the dataset is conversational ('messages' / list-of-messages 'prompt') but the "
            f"tokenizer {name!r} has no chat template; use a model whose tokenizer has one "
            "(tokenizer_config.json 'chat_template' or chat_template.jinja), or give text "
            "prompts in a 'prompt' column")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def render_rows(rows: list[dict], tokenizer) -> list[dict]:
    """Replace each conversational row's ``prompt`` by its rendered chat prompt."""
    return [{**r, "prompt": render_prompt(tokenizer, r[PROMPT_MESSAGES])} for r in rows]
