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

    def _pieces(self, conversation: list[dict[str, str]]) -> list[str]:
        """Every text the assembly tokenises for this conversation."""
        texts = [self.user, self.end + self.separator, self.assistant, self.separator]
        for turn in conversation:
            if turn["from"] == "human":
                texts += turn["value"].split(IMAGE_PLACEHOLDER)
            else:
                texts.append(turn["value"] + self.end)
        return texts

    def _assemble(self, conversation: list[dict[str, str]], image_tokens: int, seg_tokens: int, bos: int | None,
                  ids_of) -> tuple[list[int], list[int]]:
        """ids and labels from the tokens of each piece (`ids_of`); `<image>` in a human turn becomes image_tokens
        image ids followed by seg_tokens map ids; labels cover answers and their end."""
        ids = [bos] if bos is not None else []
        labels = [IGNORE] * len(ids)
        for turn in conversation:
            if turn["from"] == "human":
                part = list(ids_of(self.user))
                for k, piece in enumerate(turn["value"].split(IMAGE_PLACEHOLDER)):
                    if k:
                        part += [IMAGE_TOKEN_ID] * image_tokens + [SEG_TOKEN_ID] * seg_tokens
                    part += ids_of(piece)
                part += ids_of(self.end + self.separator)
                ids += part
                labels += [IGNORE] * len(part)
            elif turn["from"] == "gpt":
                opening, answer, closing = ids_of(self.assistant), ids_of(turn["value"] + self.end), \
                    ids_of(self.separator)
                ids += opening + answer + closing
                labels += [IGNORE] * len(opening) + answer + [IGNORE] * len(closing)
            else:
                raise ValueError(f"conversation turn from {turn['from']!r}: expected 'human' or 'gpt'")
        return ids, labels

    def encode(self, tokenizer, conversation: list[dict[str, str]], image_tokens: int,
               seg_tokens: int = 0) -> tuple[list[int], list[int]]:
        """Training form: ids and labels of the whole conversation; labels cover answers and their end."""
        return self.encode_many(tokenizer, [conversation], image_tokens, seg_tokens)[0]

    def encode_many(self, tokenizer, conversations: list[list[dict[str, str]]], image_tokens: int,
                    seg_tokens: int = 0) -> list[tuple[list[int], list[int]]]:
        """`encode` for many conversations with one batched tokenizer call for all their distinct texts: the
        tokenizer's per-call overhead, not the tokenising, was three quarters of encoding a record."""
        texts = sorted({t for c in conversations for t in self._pieces(c)} - {""})
        table = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True)) if texts else {}
        table[""] = []
        return [self._assemble(c, image_tokens, seg_tokens, tokenizer.bos_token_id, table.__getitem__)
                for c in conversations]

    def prompt(self, tokenizer, question: str, image_tokens: int, seg_tokens: int = 0,
               history: list[dict[str, str]] | None = None) -> list[int]:
        """Generation form: the conversation so far, the question, and the opening of the answer."""
        turns = [*(history or []), {"from": "human", "value": question}]
        if not any(IMAGE_PLACEHOLDER in t["value"] for t in turns):
            turns[0] = {**turns[0], "value": f"{IMAGE_PLACEHOLDER}\n{turns[0]['value']}"}
        ids, _ = self.encode(tokenizer, turns, image_tokens, seg_tokens)
        return ids + self._text(tokenizer, self.assistant)

    def turn_start_id(self, tokenizer) -> int:
        """The token that opens a human turn: a question's scope starts there (the answer pointer's)."""
        return self._text(tokenizer, self.user)[0]

    def answer_opening(self, tokenizer) -> list[int]:
        """The tokens an answer's text follows (the assistant opening): the answer pointer's word forms."""
        return self._text(tokenizer, self.assistant)

    def stop_ids(self, tokenizer) -> set[int]:
        ids = set(self._text(tokenizer, self.end)[-1:])
        return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


CHAT_TEMPLATES = {
    "tiny": ChatTemplate(),
    "vicuna_v1": ChatTemplate(user="USER: ", assistant="ASSISTANT:", end="</s>", separator=" "),
}
