"""Read instructions from FastChat/ShareGPT JSON, Alpaca JSON/JSONL, plain JSONL, OpenAI Batch JSONL or a
Hugging Face dataset folder into one `Request` type."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqsched.errors import InputError

OPENAI_CHAT_URL = "/v1/chat/completions"


@dataclass(frozen=True)
class Request:
    """One instruction to serve or label."""

    id: str
    prompt: str
    """The user's instruction: what length predictors see."""
    messages: tuple[Mapping[str, str], ...] = ()
    """The whole chat when the source has one (system or earlier turns); empty means one user turn."""
    reference: str | None = None
    """A reference answer, when the source has one."""
    max_tokens: int | None = None
    """A per-request cap on generated tokens (OpenAI `max_tokens`)."""
    temperature: float | None = None

    def chat(self) -> list[dict[str, str]]:
        """The messages to render with the chat template."""
        if self.messages:
            return [dict(message) for message in self.messages]
        return [{"role": "user", "content": self.prompt}]


class InputFormat(enum.Enum):
    """Instruction file formats; AUTO looks at the suffix and the first record."""

    AUTO = "auto"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"
    PLAIN = "plain"
    OPENAI_BATCH = "openai-batch"
    HF_DATASET = "hf-dataset"


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read, and why."""

    path: str
    where: int | str
    """Line number (JSONL) or record number (JSON array: 'record N'), both counted from 1."""
    problem: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.where}: {self.problem}"


@dataclass
class ReadResult:
    """What a reader produced: the good requests in file order and the skipped bad records."""

    requests: list[Request]
    bad: list[BadRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Unreadable:
    """What iter_records yields for a record it could not read (bad JSON, bytes that are not UTF-8)."""

    problem: str


class RecordError(ValueError):
    """A problem with one record (the reader adds file and position)."""

    def __init__(self, problem: str, record_id: str | None = None) -> None:
        super().__init__(problem)
        self.record_id = record_id


def _text(record: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _record_id(record: Mapping[str, Any], key: str, fallback: str) -> str:
    value = record.get(key, fallback)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"field {key!r} must be a string or an integer")
    return str(value)


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    """The prompt of an Alpaca record, built as in ../shared/data/sequence-scheduling (README)."""
    instruction = instruction.strip()
    if not input_text or not input_text.strip():
        return instruction
    return f"{instruction.rstrip('.')}: {input_text.strip()}"


def parse_sharegpt(record: Mapping[str, Any], fallback_id: str) -> Request:
    """A FastChat/ShareGPT record: the first human turn is the prompt, the next gpt turn the reference."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("missing or empty 'conversations' list")
    record_id = _record_id(record, "id", fallback_id)
    prompt = reference = None
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise RecordError("each conversation turn must be an object", record_id)
        speaker = turn.get("from")
        if speaker in ("human", "user") and prompt is None:
            prompt = _text(turn, "value")
        elif speaker in ("gpt", "assistant") and prompt is not None and reference is None:
            reference = _text(turn, "value")
    if not prompt or not prompt.strip():
        raise RecordError("no human turn with text", record_id)
    return Request(id=record_id, prompt=prompt, reference=reference)


def parse_alpaca(record: Mapping[str, Any], fallback_id: str) -> Request:
    """An Alpaca record: instruction, optional input and output."""
    record_id = _record_id(record, "id", fallback_id)
    instruction = _text(record, "instruction")
    if not instruction or not instruction.strip():
        raise RecordError("empty 'instruction'", record_id)
    prompt = alpaca_prompt(instruction, _text(record, "input", required=False))
    return Request(id=record_id, prompt=prompt, reference=_text(record, "output", required=False))


def parse_plain(record: Mapping[str, Any], fallback_id: str) -> Request:
    """A plain record: {"id", "prompt"} (also "reference", "max_tokens")."""
    record_id = _record_id(record, "id", fallback_id)
    prompt = _text(record, "prompt")
    if not prompt or not prompt.strip():
        raise RecordError("empty 'prompt'", record_id)
    max_tokens = record.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise RecordError("'max_tokens' must be a positive integer", record_id)
    return Request(
        id=record_id,
        prompt=prompt,
        reference=_text(record, "reference", required=False),
        max_tokens=max_tokens,
    )


def _content_text(content: Any, custom_id: str) -> str:
    """A message's content as text: a string, or a list of text parts ([{"type": "text", "text": ...}], as the
    OpenAI API accepts), joined with newlines as vLLM's OpenAI server joins them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise RecordError(f"only text content parts are served, got {kind!r}", custom_id)
            texts.append(part["text"])
        return "\n".join(texts)
    raise RecordError("each message needs a 'content': a string or a list of text parts", custom_id)


def parse_openai_batch(record: Mapping[str, Any], fallback_id: str) -> Request:
    """An OpenAI Batch line for /v1/chat/completions: custom_id, body.messages, max_tokens, temperature."""
    custom_id = record.get("custom_id")
    if isinstance(custom_id, int) and not isinstance(custom_id, bool):
        custom_id = str(custom_id)  # the API wants a string; an integer is unambiguous, so take it
    if custom_id is None or custom_id == "":
        raise RecordError("missing 'custom_id'")
    if not isinstance(custom_id, str):
        raise RecordError(f"'custom_id' must be a string, got {type(custom_id).__name__}")
    url = record.get("url", OPENAI_CHAT_URL)
    if url != OPENAI_CHAT_URL:
        raise RecordError(f"unsupported url {url!r}; only {OPENAI_CHAT_URL} is served", custom_id)
    body = record.get("body")
    if not isinstance(body, Mapping):
        raise RecordError("missing 'body' object", custom_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("body.messages must be a non-empty list", custom_id)
    chat: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise RecordError("each message must be an object with 'role' and 'content'", custom_id)
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise RecordError(f"unknown message role {role!r}", custom_id)
        chat.append({"role": role, "content": _content_text(message.get("content"), custom_id)})
    user_turns = [message["content"] for message in chat if message["role"] == "user"]
    if not user_turns:
        raise RecordError("no user message", custom_id)
    if not user_turns[-1].strip():
        # An empty prompt is a bug in whatever built the batch; answering it would hide that and waste a slot.
        raise RecordError("the last user message is empty", custom_id)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise RecordError("body.max_tokens must be a positive integer", custom_id)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0
    ):
        raise RecordError("body.temperature must be a number >= 0", custom_id)
    return Request(
        id=custom_id,
        prompt=user_turns[-1],
        messages=tuple(chat),
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
    )


PARSERS: dict[InputFormat, Callable[[Mapping[str, Any], str], Request]] = {
    InputFormat.SHAREGPT: parse_sharegpt,
    InputFormat.ALPACA: parse_alpaca,
    InputFormat.PLAIN: parse_plain,
    InputFormat.OPENAI_BATCH: parse_openai_batch,
}


def detect_format(record: Mapping[str, Any]) -> InputFormat:
    """The format of a record, from its keys."""
    if "conversations" in record:
        return InputFormat.SHAREGPT
    if "custom_id" in record or "body" in record:
        return InputFormat.OPENAI_BATCH
    if "instruction" in record:
        return InputFormat.ALPACA
    if "prompt" in record:
        return InputFormat.PLAIN
    raise RecordError(
        "unknown record format: expected 'conversations' (ShareGPT), 'instruction' (Alpaca), "
        "'prompt' (plain) or 'custom_id' + 'body' (OpenAI Batch)"
    )


def _undecodable(value: Any) -> bool:
    """True when a string inside a parsed record holds bytes that were not UTF-8 (surrogate escapes)."""
    if isinstance(value, str):
        return any("\udc80" <= char <= "\udcff" for char in value)
    if isinstance(value, Mapping):
        return any(_undecodable(key) or _undecodable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_undecodable(item) for item in value)
    return False


def _not_utf8(line: bytes, error: UnicodeDecodeError) -> Unreadable:
    column = len(line[: error.start].decode("utf-8", errors="replace")) + 1
    return Unreadable(f"not UTF-8 text (byte 0x{line[error.start]:02x} at column {column})")


def read_utf8(path: str | Path) -> str:
    """A whole text file; bytes that are not UTF-8 stop with InputError naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        start = data.rfind(b"\n", 0, error.start) + 1
        end = data.find(b"\n", error.start)
        line = data[start : end if end >= 0 else len(data)]
        bad = _not_utf8(line, UnicodeDecodeError("utf-8", line, error.start - start, error.end - start, error.reason))
        raise InputError(path, data.count(b"\n", 0, error.start) + 1, bad.problem) from None


def iter_records(path: Path) -> Iterator[tuple[int | str, Any]]:
    """(position, record) pairs: line numbers for JSONL, 'record N' for a JSON array (both from 1). A record that
    cannot be read comes as an Unreadable (bad JSON, or bytes that are not UTF-8), so a reader can skip it."""
    data = path.read_bytes()
    stripped = data.lstrip()
    if path.suffix == ".json" or stripped.startswith(b"["):
        checked = False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Keep undecodable bytes as surrogate escapes: one bad record need not take the whole file down.
            text, checked = data.decode("utf-8", errors="surrogateescape"), True
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(path, error.lineno, f"invalid JSON ({error.msg}, column {error.colno})") from error
        if not isinstance(records, list):
            raise InputError(path, None, "a JSON file must hold a list of records")
        for number, record in enumerate(records, start=1):
            if checked and _undecodable(record):
                yield f"record {number}", Unreadable("not UTF-8 text")
            else:
                yield f"record {number}", record
        return
    # Split on newline bytes only: str.splitlines would also split inside a JSON string holding U+2028.
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield number, _not_utf8(line, error)
            continue
        try:
            yield number, json.loads(decoded)
        except json.JSONDecodeError as error:
            yield number, Unreadable(f"invalid JSON ({error.msg}, column {error.colno})")


def read_requests(path: str | Path, fmt: InputFormat = InputFormat.AUTO, *, skip_bad: bool = False) -> ReadResult:
    """Read a file of instructions; a bad record raises InputError (file + line) unless skip_bad."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file or folder")
    if path.is_dir() or fmt is InputFormat.HF_DATASET:
        return _read_dataset_folder(path, skip_bad=skip_bad)
    result = ReadResult(requests=[])
    seen: set[str] = set()
    for count, (position, record) in enumerate(iter_records(path)):
        try:
            if isinstance(record, Unreadable):
                raise RecordError(record.problem)
            if not isinstance(record, Mapping):
                raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
            record_fmt = detect_format(record) if fmt is InputFormat.AUTO else fmt
            request = PARSERS[record_fmt](record, str(count + 1))
            if request.id in seen:
                raise RecordError(f"duplicate id {request.id!r}", request.id)
            seen.add(request.id)
            result.requests.append(request)
        except RecordError as error:
            if not skip_bad:
                raise InputError(path, position, str(error)) from None
            result.bad.append(BadRecord(str(path), position, str(error), error.record_id))
    return result


def _read_dataset_folder(path: Path, *, skip_bad: bool) -> ReadResult:
    """A Hugging Face dataset saved with save_to_disk, with 'id' and 'prompt' columns."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(path, None, f"not a dataset folder saved with save_to_disk ({error})") from error
    except IndexError:  # datasets cannot load a split saved with no rows
        raise InputError(path, None, "the dataset holds no records") from None
    splits = list(loaded.values()) if isinstance(loaded, DatasetDict) else [loaded]
    result = ReadResult(requests=[])
    seen: set[str] = set()
    index = 0
    for split in splits:
        assert isinstance(split, Dataset)
        if "prompt" not in split.column_names:
            raise InputError(path, None, f"the dataset has no 'prompt' column (columns: {split.column_names})")
        for record in split:
            try:
                request = parse_plain(record, str(index + 1))
                if request.id in seen:
                    raise RecordError(f"duplicate id {request.id!r}", request.id)
                seen.add(request.id)
                result.requests.append(request)
            except RecordError as error:
                if not skip_bad:
                    raise InputError(path, f"record {index + 1}", str(error)) from None
                result.bad.append(BadRecord(str(path), f"record {index + 1}", str(error), error.record_id))
            index += 1
    return result
