"""The chat template: a LLaVA conversation -> input_ids and labels (-100 everywhere but the answers)."""

from __future__ import annotations

from dataclasses import dataclass

from model.tokenizer import IMAGE_TOKEN_ID, SEG_TOKEN_ID

IMAGE_PLACEHOLDER = "<image>"
IGNORE = -100


@dataclass(frozen=True)
class ChatTemplate:
    user: str = "<|user|>"  # opens a human turn
    assistant: str = "<|assistant|>"  # opens an answer
    end: str = "<|end|>"  # closes every turn; the model learns to say it after an answer
    separator: str = "\n"  # after each closed turn

    def _text(self, tokenizer, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _human(self, tokenizer, text: str, image_tokens: int, seg_tokens: int) -> list[int]:
        """The human turn; `<image>` becomes image_tokens image ids followed by seg_tokens map ids."""
        ids = self._text(tokenizer, self.user)
        pieces = text.split(IMAGE_PLACEHOLDER)
        for k, piece in enumerate(pieces):
            if k:
                ids += [IMAGE_TOKEN_ID] * image_tokens + [SEG_TOKEN_ID] * seg_tokens
            ids += self._text(tokenizer, piece)
        return ids + self._text(tokenizer, self.end + self.separator)

    def encode(self, tokenizer, conversation: list[dict[str, str]], image_tokens: int,
               seg_tokens: int = 0) -> tuple[list[int], list[int]]:
        """Training form: ids and labels of the whole conversation; labels cover answers and their end."""
        ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        labels = [IGNORE] * len(ids)
        for turn in conversation:
            if turn["from"] == "human":
                part = self._human(tokenizer, turn["value"], image_tokens, seg_tokens)
                ids += part
                labels += [IGNORE] * len(part)
            elif turn["from"] == "gpt":
                opening = self._text(tokenizer, self.assistant)
                answer = self._text(tokenizer, turn["value"] + self.end)
                closing = self._text(tokenizer, self.separator)
                ids += opening + answer + closing
                labels += [IGNORE] * len(opening) + answer + [IGNORE] * len(closing)
            else:
                raise ValueError(f"conversation turn from {turn['from']!r}: expected 'human' or 'gpt'")
        return ids, labels

    def prompt(self, tokenizer, question: str, image_tokens: int, seg_tokens: int = 0,
               history: list[dict[str, str]] | None = None) -> list[int]:
        """Generation form: the conversation so far, the question, and the opening of the answer."""
        turns = [*(history or []), {"from": "human", "value": question}]
        if not any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
            turns[0] = {**turns[0], "value": f"{IMAGE_PLACEHOLDER}\n{turns[0]['value']}"}
        ids, _ = self.encode(tokenizer, turns, image_tokens, seg_tokens)
        return ids + self._text(tokenizer, self.assistant)

    def stop_ids(self, tokenizer) -> set[int]:
        ids = set(self._text(tokenizer, self.end)[-1:])
        return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


CHAT_TEMPLATES = {
    "tiny": ChatTemplate(),
    "vicuna_v1": ChatTemplate(user="USER: ", assistant="ASSISTANT:", end="</s>", separator=" "),
}
