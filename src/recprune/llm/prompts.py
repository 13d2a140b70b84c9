"""The BIGRec / DEALRec instruction prompt (Alpaca format) and its tokenisation.

One sample per user: the input lists the titles of the user's training items except the last,
the output is the title of the last training item (:func:`build_records`; its ``period`` asks for
the first validation or test item instead, after all earlier items, and ``with_target=False``
leaves the output empty for generation)::

    Below is an instruction that describes a task, paired with an input that provides further
    context. Write a response that appropriately completes the request.

    ### Instruction:
    Given the game products that the user purchased before, please recommend a new game product
    that the user likes to the user.

    ### Input:
    The user has purchased the following game products before, with titles as: T1; T2; ...

    ### Response:
    "Target title"

Titles are cleaned of newlines / runs of whitespace; an item without a title is shown as
``Item <id>``. When the tokenised sample (prompt + response + eos) is longer than ``cutoff_len``
tokens, history titles are dropped from the FRONT (oldest first) until it fits, as BIGRec does.

Tokenisation (:func:`tokenize_records`) splits every sample into the prefix shared by all prompts
(the header, the instruction and the fixed lead-in of the input, identical for every user), the
sample-specific token ids and a mask of the tokens the loss is taken on, so that a scorer can run
the shared prefix through the model once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recprune.data.dataset import Sequences
from recprune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ALPACA_HEADER = ("Below is an instruction that describes a task, paired with an input that "
                 "provides further context. Write a response that appropriately completes the "
                 "request.\n\n")
ALPACA_HEADER_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                          "appropriately completes the request.\n\n")


@dataclass(frozen=True)
class PromptTemplate:
    """Dataset-specific wording of the recommendation prompt.

    Attributes
    ----------
    instruction:
        The ``### Instruction:`` text.
    input_prefix:
        Fixed lead-in of the ``### Input:`` text; the history titles follow after one space.
    history_sep:
        Separator between history titles.
    quote_history, quote_target:
        Wrap history titles / the target title in double quotes.
    missing_title:
        Text for an item without a title (``{item}`` = its id).
    max_history:
        Keep at most this many most recent history titles (``None``: all; the cutoff still
        applies).
    """

    instruction: str = ("Given the game products that the user purchased before, please "
                        "recommend a new game product that the user likes to the user.")
    input_prefix: str = ("The user has purchased the following game products before, with "
                         "titles as:")
    history_sep: str = "; "
    quote_history: bool = False
    quote_target: bool = True
    missing_title: str = "Item {item}"
    max_history: int | None = None

    def title_text(self, item: int, title: str | None) -> str:
        if title is not None:
            title = " ".join(str(title).split())
        return title if title else self.missing_title.format(item=int(item))

    def input_text(self, history_titles: Sequence[str]) -> str:
        if not history_titles:
            return self.input_prefix
        q = '"' if self.quote_history else ""
        return f"{self.input_prefix} " + self.history_sep.join(f"{q}{t}{q}" for t in
                                                               history_titles)

    def output_text(self, target_title: str) -> str:
        return f'"{target_title}"' if self.quote_target else target_title

    def shared_prefix(self) -> str:
        """Prompt text shared by every sample of this template (header up to the input lead-in)."""
        return (ALPACA_HEADER + f"### Instruction:\n{self.instruction}\n\n### Input:\n"
                + self.input_prefix)


GAMES_TEMPLATE = PromptTemplate()
# Same pattern for DEALRec's other two data sets (wording not verified against their release).
BOOK_TEMPLATE = PromptTemplate(
    instruction=("Given the books that the user purchased before, please recommend a new book "
                 "that the user likes to the user."),
    input_prefix="The user has purchased the following books before, with titles as:")
MICROLENS_TEMPLATE = PromptTemplate(
    instruction=("Given the micro-videos that the user watched before, please recommend a new "
                 "micro-video that the user likes to the user."),
    input_prefix="The user has watched the following micro-videos before, with titles as:")
TEMPLATES = {"games": GAMES_TEMPLATE, "book": BOOK_TEMPLATE, "microlens": MICROLENS_TEMPLATE}


def template_for(dataset_name: str) -> PromptTemplate:
    """The template for a data set name (``games``, ``book``, ``microlens``); games otherwise."""
    key = dataset_name.lower()
    for name, tpl in TEMPLATES.items():
        if key.startswith(name):
            return tpl
    return GAMES_TEMPLATE


def format_prompt(record: dict) -> tuple[str, str]:
    """Alpaca prompt text (ending with ``### Response:\\n``) and response text of a record."""
    instruction = record["instruction"]
    inp = record.get("input") or ""
    if inp:
        prompt = (ALPACA_HEADER + f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n"
                  "### Response:\n")
    else:
        prompt = ALPACA_HEADER_NO_INPUT + f"### Instruction:\n{instruction}\n\n### Response:\n"
    return prompt, record.get("output", "")


# ----------------------------------------------------------------------------- tokenisation

def _bos_ids(tokenizer) -> list[int]:
    """[bos] if the tokenizer adds one by default, else []."""
    with_sp = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_sp) > len(without) and with_sp[0] == tokenizer.bos_token_id:
        return [int(tokenizer.bos_token_id)]
    return []


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """One bulk tokenizer call on a list of texts (no special tokens)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


@dataclass(frozen=True)
class TokenizedSamples:
    """Token ids of n samples, split into a shared prefix and sample-specific parts.

    Sample ``i``'s full sequence is ``prefix_ids + ids[indptr[i]:indptr[i+1]]``.
    ``target[j]`` is True when token ``j`` of the sample-specific ids is a loss target (it is
    predicted from the position before it; for the first sample-specific token that position
    is the last prefix token). ``n_targets[i]`` counts all loss targets of sample ``i``'s full
    sequence, those inside the prefix included (``loss_on="all"``), so that the per-sample mean
    loss has the same normalisation whether or not the prefix is shared.
    """

    prefix_ids: np.ndarray  # int64 (P,)
    indptr: np.ndarray  # int64 (n+1,)
    ids: np.ndarray  # int64 (nnz,)
    target: np.ndarray  # bool (nnz,)
    n_targets: np.ndarray  # int64 (n,)
    n_truncated: int = 0

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Sample-specific lengths (without the prefix)."""
        return np.diff(self.indptr)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.ids[s:e], self.target[s:e]

    def full(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Full sequence ids and target mask of sample ``i`` (prefix included)."""
        ids, tgt = self.sample(i)
        p = len(self.prefix_ids)
        ptgt = np.zeros(p, dtype=bool)
        if p and self.n_targets[i] > tgt.sum():  # loss_on='all': prefix tokens 1.. are targets
            ptgt[1:] = True
        return np.concatenate([self.prefix_ids, ids]), np.concatenate([ptgt, tgt])


def tokenize_records(records: Sequence[dict], tokenizer, *, prefix_text: str = "",
                     cutoff_len: int | None = 512, add_eos: bool = True,
                     loss_on: str = "response") -> TokenizedSamples:
    """Tokenise Alpaca records as (shared prefix, sample-specific ids, loss-target mask).

    Parameters
    ----------
    prefix_text:
        Text every prompt starts with (e.g. :meth:`PromptTemplate.shared_prefix`), tokenised
        once; ``""`` for no shared prefix. A record whose prompt does not start with it is a
        :class:`~recprune.errors.ConfigError`.
    cutoff_len:
        Sequences longer than this (prefix + prompt + response + eos) are cut at the end, as
        the reference's tokenizer truncation does (:func:`build_records` already drops history
        titles so that this rarely happens).
    add_eos:
        Append the eos token to the response (alpaca-lora / BIGRec do).
    loss_on:
        ``"response"``: the response tokens (+ eos) are targets; ``"all"``: every token after
        the first of the full sequence.
    """
    if loss_on not in ("response", "all"):
        raise ConfigError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    bos = _bos_ids(tokenizer)
    prefix = bos + (_encode(tokenizer, [prefix_text])[0] if prefix_text else [])
    rests, resps = [], []
    for k, rec in enumerate(records):
        prompt, resp = format_prompt(rec)
        if not prompt.startswith(prefix_text):
            raise ConfigError(f"record {k}: prompt does not start with the shared prefix "
                              f"{prefix_text[-40:]!r} (template mismatch)")
        rests.append(prompt[len(prefix_text):])
        resps.append(resp)
    rest_ids = _encode(tokenizer, rests)
    resp_ids = _encode(tokenizer, resps)
    eos = [int(tokenizer.eos_token_id)] if add_eos else []
    P = len(prefix)
    n = len(rest_ids)
    lr = np.fromiter((len(x) for x in rest_ids), dtype=np.int64, count=n)
    lo = np.fromiter((len(x) for x in resp_ids), dtype=np.int64, count=n) + len(eos)
    total = P + lr + lo
    n_trunc = 0
    if cutoff_len is not None:
        if cutoff_len <= P + 1:
            raise ConfigError(f"cutoff_len={cutoff_len} leaves no room after the {P}-token "
                              "shared prompt prefix")
        over = total > cutoff_len
        n_trunc = int(over.sum())
        if n_trunc:
            log.warning("%d samples longer than cutoff_len=%d tokens were cut at the end",
                        n_trunc, cutoff_len)
    lens = lr + lo
    if cutoff_len is not None:
        lens = np.minimum(lens, cutoff_len - P)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    ids = np.empty(indptr[-1], dtype=np.int64)
    target = np.zeros(indptr[-1], dtype=bool)
    for i in range(n):
        seq = rest_ids[i] + resp_ids[i] + eos
        s, e = indptr[i], indptr[i + 1]
        ids[s:e] = seq[:e - s]
        if loss_on == "response":
            target[s + lr[i]:e] = True
        else:
            target[s:e] = True
    if loss_on == "all":
        if P == 0:  # the first token of the sequence is predicted by nothing
            target[indptr[:-1][lens > 0]] = False
        n_targets = np.add.reduceat(target.astype(np.int64), indptr[:-1]) if n else \
            np.zeros(0, dtype=np.int64)
        n_targets = np.where(lens > 0, n_targets, 0) + max(P - 1, 0)
    else:
        n_targets = np.maximum(lens - lr, 0)
    return TokenizedSamples(np.asarray(prefix, dtype=np.int64), indptr, ids, target,
                            n_targets.astype(np.int64), n_trunc)


# ----------------------------------------------------------------------------- records

PERIODS = ("train", "valid", "test")
_PERIOD_WORDS = {"train": "training", "valid": "validation", "test": "test"}


def _require_items(dataset, rows: np.ndarray, seqs: Sequences, period: str) -> None:
    """A :class:`DataError` naming the first user of ``rows`` without an item in ``seqs``."""
    empty = np.flatnonzero(seqs.lengths[rows] < 1)
    if len(empty):
        user = int(dataset.user_ids[int(rows[empty[0]])])
        raise DataError(f"user {user} has no {_PERIOD_WORDS[period]} item: no prompt target",
                        path=getattr(dataset, "source", None) or None, field=period)


def _history_and_targets(dataset, rows: np.ndarray, period: str, with_target: bool
                         ) -> tuple[Sequences, np.ndarray | None]:
    """Per row: the items before the target of ``period`` (oldest first), and the target."""
    train = dataset.train
    if period == "train":
        _require_items(dataset, rows, train, period)
        sub = train.subset(rows)
        last = sub.indptr[1:] - 1
        keep = np.ones(sub.nnz, dtype=bool)
        keep[last] = False
        indptr = sub.indptr - np.arange(len(rows) + 1)
        targets = sub.items[last].astype(np.int64) if with_target else None
        return Sequences(indptr, sub.items[keep]), targets
    before = train if period == "valid" else train.concat(dataset.valid)
    history = before.subset(rows)
    if not with_target:
        return history, None
    seqs = getattr(dataset, period)
    _require_items(dataset, rows, seqs, period)
    return history, seqs.items[seqs.indptr[rows]].astype(np.int64)


def build_records(dataset, rows=None, template: PromptTemplate = GAMES_TEMPLATE, *,
                  period: str = "train", with_target: bool = True, tokenizer=None,
                  cutoff_len: int | None = 512, add_eos: bool = True) -> list[dict]:
    """Alpaca records (``instruction``, ``input``, ``output``) for the given user rows.

    The input lists the titles of the items before the target (oldest first), the output is
    the title of the target:

    * ``period="train"`` (the training sample): history = the user's training items but the
      last, target = the last training item;
    * ``period="valid"``: history = all training items, target = the first validation item;
    * ``period="test"``: history = training and validation items, target = the first test item.

    ``with_target=False`` leaves every output empty: prompts to generate from (the period then
    needs no item). With a ``cutoff_len``, the oldest history titles are dropped until
    ``tokenize(prompt + response)`` (+ eos with ``add_eos``) fits into ``cutoff_len`` tokens (of
    ``tokenizer``; ``None`` loads the default SmolLM2 tokenizer); ``cutoff_len=None`` keeps the
    whole history.
    """
    if period not in PERIODS:
        raise ConfigError(f"period must be one of {PERIODS}, got {period!r}")
    rows = np.arange(dataset.n_users) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ConfigError("rows must be a 1-D array of user rows")
    if len(rows) and (rows.min() < 0 or rows.max() >= dataset.n_users):
        raise ConfigError(f"user rows must be in 0..{dataset.n_users - 1}")
    history, targets = _history_and_targets(dataset, rows, period, with_target)
    starts, ends = history.indptr[:-1], history.indptr[1:]  # ends: exclusive
    h_start = starts.copy()
    if template.max_history is not None:
        h_start = np.maximum(starts, ends - template.max_history)

    # Title text of every item needed, computed once per distinct item.
    no_targets = np.zeros(0, dtype=np.int64)
    needed = np.unique(np.concatenate([history.items.astype(np.int64),
                                       targets if targets is not None else no_targets]))
    text = {int(i): template.title_text(int(i), dataset.titles[int(i)]) for i in needed}
    q = '"' if template.quote_history else ""

    def make(i: int, first: int) -> dict:
        hist = [text[int(x)] for x in history.items[first:ends[i]]]
        out = template.output_text(text[int(targets[i])]) if targets is not None else ""
        return {"instruction": template.instruction, "input": template.input_text(hist),
                "output": out}

    first = h_start.copy()
    records = [make(i, first[i]) for i in range(len(rows))]
    if cutoff_len is None or not len(rows):
        return records
    if tokenizer is None:
        from recprune.llm.loading import load_tokenizer

        tokenizer = load_tokenizer()

    prefix_text = template.shared_prefix()

    def lengths(idx: np.ndarray) -> np.ndarray:
        ts = tokenize_records([records[i] for i in idx], tokenizer, prefix_text=prefix_text,
                              cutoff_len=None, add_eos=add_eos)
        return len(ts.prefix_ids) + ts.lengths

    total = lengths(np.arange(len(rows)))
    over = np.flatnonzero(total > cutoff_len)
    if not len(over):
        return records
    # Estimate how many oldest titles to drop from per-title token counts (one bulk call over
    # the distinct titles), then correct with exact tokenisations of the affected prompts.
    sep = template.history_sep
    piece_ids = np.array(sorted(text), dtype=np.int64)
    pieces = _encode(tokenizer, [f"{sep}{q}{text[int(i)]}{q}" for i in piece_ids])
    piece_len = np.zeros(int(piece_ids.max()) + 1 if len(piece_ids) else 1, dtype=np.int64)
    piece_len[piece_ids] = [len(p) for p in pieces]
    for i in over:
        hist = history.items[first[i]:ends[i]]
        excess = total[i] - cutoff_len
        drop = int(np.searchsorted(np.cumsum(piece_len[hist]), excess))  # first k with sum>=ex
        first[i] += min(drop, len(hist))
        records[i] = make(i, first[i])
    todo = over
    while len(todo):  # exact: drop one more while too long
        tl = lengths(todo)
        too_long = todo[(tl > cutoff_len) & (first[todo] < ends[todo])]
        for i in too_long:
            first[i] += 1
            records[i] = make(i, first[i])
        todo = too_long
    todo = over[first[over] > h_start[over]]
    while len(todo):  # exact: give back a title while the estimate dropped too many
        first[todo] -= 1
        for i in todo:
            records[i] = make(i, first[i])
        tl = lengths(todo)
        bad = tl > cutoff_len
        first[todo[bad]] += 1
        for i in todo[bad]:
            records[i] = make(i, first[i])
        todo = todo[~bad & (first[todo] > h_start[todo])]
    return records
