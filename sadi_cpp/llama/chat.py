"""Text generation with a hooked Llama: how ``--chat`` wraps a prompt, and a stream of text pieces."""

from __future__ import annotations

from typing import Iterator, Optional

from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.hook import Hook, has_chat_template, use_chat_format


def choose_chat(hook: Hook, chat: bool, chat_format: Optional[str]) -> bool:
    """Whether prompts go through a chat template: a named format (which implies chat), or the
    model's own template; a model without one needs a named format."""
    if chat_format is not None:
        use_chat_format(hook, chat_format)
        return True
    if chat and not has_chat_template(hook):
        raise BadInputError(
            f"{hook.model_path}: this model has no chat template (tokenizer.chat_template) for --chat; "
            "drop --chat, or name a format with --chat-format (e.g. gemma, chatml)"
        )
    return chat


def stream_text(hook: Hook, prompt: str, chat: bool, max_tokens: int, temperature: float, top_p: float, seed: int) -> Iterator[str]:
    """The generated text piece by piece, under whatever steering the hook has in force."""
    llm = hook.llm
    llm.set_seed(seed)
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stream=True)
    if chat:
        for c in llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], **sampling):
            yield c["choices"][0]["delta"].get("content", "")
    else:
        for c in llm.create_completion(prompt, **sampling):
            yield c["choices"][0]["text"]
