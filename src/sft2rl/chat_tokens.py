"""One conversation's tokens, grown as verl's agent loops grow them: token in, token out.

A multi-turn policy (a game episode with its history in the prompt, a medical consultation)
answers, hears the environment or the patient, and answers again. Its next prompt could be
the whole chat rendered again from text, but the text of a sampled reply does not always
tokenise back into the tokens that were sampled (a byte token that does not decode alone, a
space and a newline sampled apart that the tokenizer joins), and the policy would then see
other tokens than it produced. :class:`TokenChat` keeps the tokens instead: the first prompt is
the chat template's rendering, each reply's sampled tokens are appended as they are, and each
new message is appended as the chat template renders it, through verl's continuous-token
builder (the one verl's agent loops use for the same model family). So local play, local RL
and verl's agent loops give the policy the same tokens, and an episode's RL row is one
sequence (:func:`sft2rl.rl_task.chain_turns`).

A prompt that does not extend the conversation (a Markov prompt, a window of turns that
dropped the oldest, a reply the prompt shows otherwise than it was given) is rendered
whole, as a first prompt. Where the replies re-tokenise as sampled and each ended at the
template's end-of-turn token, the grown tokens are exactly the whole chat's rendering
(tested). A reply that ends at another stop id (Qwen2.5-Instruct's ``<|endoftext|>``, a
second EOS in its generation config) is followed by the next message without the turn's
``<|im_end|>``, which the template would render, as in verl's agent loops. A reply cut at
``max_new_tokens`` has no end-of-turn token, and the next message follows it directly (the
template would close the turn first), as in verl's agent loops, which grow their tokens with
the same builder.
"""
from __future__ import annotations

from typing import Any

Messages = list[dict[str, str]]


def chat_ids(tokenizer, messages: Messages) -> list[int]:
    """The chat ``messages`` with the assistant header, as one prompt's token ids (as
    :func:`sft2rl.generation.encode_prompts` tokenises a chat)."""
    from .generation import chat_texts

    return tokenizer(chat_texts(tokenizer, [messages])[0], add_special_tokens=False)["input_ids"]


def token_builder(tokenizer, model_type: str | None):
    """verl's continuous-token builder for the model family ``model_type`` (the HF config's)."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    return create_continuous_token_builder(tokenizer, hf_model_type=model_type)


def model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


class TokenChat:
    """The token sequence of one conversation (see the module docstring)."""

    def __init__(self, tokenizer, builder):
        self.tokenizer, self.builder = tokenizer, builder
        self.ids: list[int] | None = None
        self.messages: Messages | None = None  # the messages ``ids`` hold, the last reply included
        self.continued = 0                     # prompts grown from the tokens so far (not rendered whole)

    def _extends(self, messages: Messages) -> bool:
        old = self.messages
        return (old is not None and len(messages) > len(old) and messages[:len(old)] == old
                and messages[-1].get("role") != "assistant"
                and all(m.get("role") in ("user", "system") for m in messages[len(old):]))

    def prompt(self, messages: Messages) -> list[int]:
        """The prompt ids of ``messages`` (the chat so far, the assistant to answer next)."""
        if self._extends(messages):
            try:
                merged = self.builder.merge_context_tokens(self.messages, messages, self.ids)
            except ValueError:  # the template's rendering of the new messages is not a suffix: render whole
                merged = None
            if merged is not None:
                self.ids, self.messages = list(merged.token_ids), list(messages)
                self.continued += 1
                return list(self.ids)
        self.ids, self.messages = chat_ids(self.tokenizer, messages), list(messages)
        return list(self.ids)

    def reply(self, ids: list[int], text: str) -> None:
        """Append the policy's sampled reply: its token ids (the end-of-turn token included where
        it stopped there) and its text, as the next prompt's messages will show it."""
        if self.ids is None or self.messages is None:
            raise RuntimeError("a reply before any prompt")
        self.ids = self.ids + list(ids)
        self.messages = self.messages + [{"role": "assistant", "content": text}]


def rendered_length(tokenizer, messages: Messages, generation_prompt: bool) -> int:
    """Tokens of the chat template's rendering of ``messages`` (with the assistant header
    where ``generation_prompt``)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer.encode(text, add_special_tokens=False))


def message_tokens(tokenizer, messages: Messages, new: Messages, model_type: str | None) -> int:
    """How many tokens a message turn takes in an agent loop's sequence: the tokens
    :class:`TokenChat` (verl's token builder for ``model_type``) appends for ``new`` after
    ``messages``, a conversation that ends with an assistant reply sampled through its
    end-of-turn token; and at least the chat template's difference between the two
    renderings. The template's difference alone undercounts where the template renders the
    last assistant turn otherwise than an earlier one (Qwen3's think scaffold)."""
    from .generation import turn_end_token_id

    rendered = rendered_length(tokenizer, messages + new, True) - rendered_length(tokenizer, messages, False)
    end = turn_end_token_id(tokenizer)
    if end is None or messages[-1]["role"] != "assistant":
        return rendered
    chat = TokenChat(tokenizer, token_builder(tokenizer, model_type))
    chat.prompt(messages[:-1])
    reply = messages[-1]["content"]
    chat.reply(tokenizer.encode(reply, add_special_tokens=False) + [end], reply)
    before = len(chat.ids)
    chat.prompt(messages + new)
    return max(rendered, len(chat.ids) - before) if chat.continued else rendered


class TokenChats:
    """A :class:`TokenChat` per conversation object (a game episode, a consultation), made on
    first sight; the objects are held, so their ids stay theirs."""

    def __init__(self, model, tokenizer):
        self.tokenizer = tokenizer
        self.builder = token_builder(tokenizer, model_type(model))
        self._chats: dict[int, tuple[Any, TokenChat]] = {}

    def __call__(self, item: Any) -> TokenChat:
        got = self._chats.get(id(item))
        if got is None or got[0] is not item:
            got = (item, TokenChat(self.tokenizer, self.builder))
            self._chats[id(item)] = got
        return got[1]
