"""Chat and text generation with a hooked Llama: which chat format wraps a prompt (the model's
template or a named llama-cpp-python format), the prompt tokens a chat request evaluates, and a
stream of generated text pieces."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from sadi_cpp.errors import BadInputError, SadiError

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


def chat_formats() -> List[str]:
    """The chat format names llama-cpp-python knows (for ``Llama(chat_format=...)``)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    return sorted(LlamaChatCompletionHandlerRegistry()._chat_handlers)


def use_chat_format(hook: Hook, name: str) -> None:
    """Make ``create_chat_completion`` wrap messages in the named format instead of the model's."""
    known = chat_formats()
    if name not in known:
        raise BadInputError(f"unknown chat format '{name}': use one of {', '.join(known)}", field="chat_format")
    hook.llm.chat_handler = None
    hook.llm.chat_format = name


def has_chat_template(hook: Hook) -> bool:
    return "tokenizer.chat_template" in hook.llm.metadata


def choose_chat(hook: Hook, chat: bool, chat_format: Optional[str]) -> bool:
    """Whether prompts go through a chat template: a named format (which implies chat), or the
    model's own template; a model without one needs a named format."""
    if chat_format is not None:
        use_chat_format(hook, chat_format)
        return True
    if chat and not has_chat_template(hook):
        raise BadInputError(f"{hook.model_path}: this model has no chat template (tokenizer.chat_template); "
                            "name a chat format (e.g. gemma, chatml), or do without chat", field="chat_format")
    return chat


class _Formatted(Exception):
    """Carries the prompt tokens and stop strings out of a chat handler (see chat_prompt)."""

    def __init__(self, tokens: List[int], stop: List[str]):
        super().__init__("formatted")
        self.tokens, self.stop = tokens, stop


# Stands for message i's content while a template renders (private-use characters: templates
# pass them through, and they are split off before anything is tokenized).
_HOLE = "\ue000sadi-content-{}\ue001"
_HOLES = re.compile("\ue000sadi-content-(\\d+)\ue001")


class _FormatOnly:
    """Stands in for the Llama a chat handler drives: tokenizes with the real one and, when the
    handler asks for a completion, hands back the prompt it built instead of generating.

    With ``contents``, the template was rendered with placeholders for the messages' contents:
    the template's own text is tokenized with control tokens recognised, each content as plain
    text, so that a user's "<end_of_turn>" stays text and cannot forge a turn. Only messages that
    spell a control token take this path; on a SentencePiece vocabulary that adds a leading space
    to a text, each piece tokenized apart starts with that space."""

    def __init__(self, llm: Any, contents: Optional[List[str]] = None):
        self._llm = llm
        self._contents = contents
        self.verbose = False

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        if self._contents is None:
            return self._llm.tokenize(text, add_bos=add_bos, special=special)
        parts = _HOLES.split(text.decode("utf-8"))
        holes = [int(i) for i in parts[1::2]]
        if sorted(holes) != list(range(len(self._contents))):
            raise BadInputError("a message holds control-token text (e.g. an end-of-turn marker) and this chat template "
                                "does not keep message text apart from its own: remove that text from the message",
                                field="messages")
        tokens = self._llm.tokenize(parts[0].encode("utf-8"), add_bos=add_bos, special=special)
        for i, own in zip(holes, parts[2::2]):
            tokens += self._llm.tokenize(self._contents[i].encode("utf-8"), add_bos=False, special=False)
            tokens += self._llm.tokenize(own.encode("utf-8"), add_bos=False, special=special) if own else []
        return tokens

    def create_completion(self, prompt: Any = None, stop: Any = None, **kwargs: Any) -> Any:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        raise _Formatted(list(prompt), [s for s in stops if s])


def chat_prompt(hook: Hook, messages: List[Dict[str, Any]]) -> Tuple[List[int], List[str]]:
    """The tokens ``create_chat_completion`` would evaluate for ``messages`` (through the chat
    format in force: a named one, else the model's template) and the stop strings it adds."""
    import jinja2
    from llama_cpp import llama_chat_format

    llm = hook.llm
    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    stand_in = _FormatOnly(llm)
    if any(_has_control_text(hook, m.get("content")) for m in messages):
        contents = [m["content"] for m in messages if isinstance(m.get("content"), str)]
        holes = iter(range(len(contents)))
        messages = [dict(m, content=_HOLE.format(next(holes))) if isinstance(m.get("content"), str) else m for m in messages]
        stand_in = _FormatOnly(llm, contents)
    try:
        handler(llama=stand_in, messages=messages)
    except _Formatted as done:
        return done.tokens, done.stop
    except BadInputError:
        raise
    except (ValueError, TypeError, KeyError, jinja2.TemplateError) as e:  # the template refused the messages
        raise BadInputError(f"the chat template could not format these messages: {e}", field="messages") from None
    raise SadiError(f"chat format {llm.chat_format!r} did not produce a prompt")


def _has_control_text(hook: Hook, content: Any) -> bool:
    """True when ``content`` spells a control token's text (e.g. "<end_of_turn>")."""
    if not isinstance(content, str) or not content:
        return False
    return hook.tokenize(content, add_bos=False, special=True) != hook.tokenize(content, add_bos=False, special=False)


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


def chat_text(hook: Hook, user: str) -> str:
    """The text the chat format in force makes of one user turn with the model's turn opened,
    control tokens spelled out (read back with ``tokenize(..., special=True)``) and without the
    BOS token (tokenizing adds it)."""
    tokens, _ = chat_prompt(hook, [{"role": "user", "content": user}])
    if tokens and tokens[0] == hook.llm.token_bos():
        tokens = tokens[1:]
    return hook.llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")
