"""The effort scorer: per-sample LoRA gradient norms of a causal LM, computed in batches.

:class:`EffortScorer` wraps a model with a fresh LoRA adapter, lays the length-sorted samples
out in batches (:mod:`~recprune.scoring.effort.layout`), runs every batch with the per-sample
attention kernel (:mod:`~recprune.scoring.effort.attention`) and the prefix / LoRA hooks
(:mod:`~recprune.scoring.effort.hooks`), and turns one ``autograd.grad`` call per batch into
per-sample gradient norms (:mod:`~recprune.scoring.effort.norms`). Scores are cached on disk
per chunk (:mod:`~recprune.scoring.effort.cache`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recprune.errors import ConfigError, ScoringError
from recprune.llm.causal_lm import CausalLMParts
from recprune.llm.kv_cache import expanded_cache
from recprune.llm.lora import attach_lora, lora_modules, select_layers
from recprune.llm.prompts import (PromptTemplate, TokenizedSamples, build_records, template_for,
                                  tokenize_records)
from recprune.scoring.effort.attention import attention_configs, batch_state, packed_attention
from recprune.scoring.effort.cache import (cache_spec, load_chunks, open_cache, open_finished,
                                           scores_fingerprint)
from recprune.scoring.effort.config import EffortConfig
from recprune.scoring.effort.hooks import LoraCapture, PrefixInsert
from recprune.scoring.effort.layout import Batch, Layout, build_layout, plan_batches
from recprune.scoring.effort.norms import squared_norms
from recprune.scoring.effort.prefix import SharedPrefix, run_shared_prefix
from recprune.scoring.effort.reference import reference_scores
from recprune.utils.progress import progress as progress_bar


class EffortScorer:
    """Computes DEALRec effort scores (Eq. 12) with a causal LM and a fresh LoRA adapter.

    Parameters
    ----------
    model:
        A loaded transformers causal LM (then ``tokenizer`` is required), or anything
        :func:`recprune.llm.load_causal_lm` accepts (``None`` = SmolLM2-135M-Instruct).
    config:
        :class:`EffortConfig`.
    device:
        Used only when the model is loaded here; a given model is used on its own device.

    The model is wrapped with a peft LoRA adapter in place (``self.model``); its base weights
    are frozen. See :mod:`recprune.scoring.effort` for what is computed and how the shared
    prompt prefix is treated.
    """

    def __init__(self, model=None, tokenizer=None, config: EffortConfig | None = None, *,
                 device: str | torch.device = "auto", model_cache_dir: str | Path | None = None):
        self.config = config = config or EffortConfig()
        if model is None or isinstance(model, (str, Path)):
            from recprune.llm.loading import load_causal_lm

            model, tokenizer = load_causal_lm(model, device=device, cache_dir=model_cache_dir)
        elif tokenizer is None:
            raise ConfigError("a tokenizer is required together with a loaded model")
        self.tokenizer = tokenizer
        self.model = self._wrap(model)
        self.last_run: dict = {}
        self._prefix_cache: dict[tuple, SharedPrefix] = {}
        # The hooks hold only this capture object (no reference cycle scorer <-> model).
        self._cap = cap = LoraCapture(keep_x=self._b_nonzero)
        for k, m in enumerate(self._scored):
            m.A.register_forward_hook(cap.hook_a(k))
            m.B.register_forward_hook(cap.hook_b(k))
        self._ins = PrefixInsert()
        if self.insert_layer is not None:
            for i in range(self.insert_layer, len(self._layers)):
                hook = self._ins.hook if i == self.insert_layer else self._ins.hook_above
                self._layers[i].register_forward_pre_hook(hook, with_kwargs=True)

    # -- setup ---------------------------------------------------------------------------------

    def _wrap(self, model):
        """Attach the adapter; only the scored ``lora_B`` weights require grad (to get their
        output gradients)."""
        cfg = self.config
        pm = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                         target_modules=cfg.target_modules, seed=cfg.seed)
        pm.eval()
        lora = lora_modules(pm)
        self.n_layers = max(m.layer for m in lora) + 1
        if cfg.init_lora_b_std > 0:
            g = torch.Generator().manual_seed(cfg.seed + 1)
            for m in lora:
                w = m.B.weight
                with torch.no_grad():
                    w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float32) *
                            cfg.init_lora_b_std)
        self.scored_layers = select_layers(cfg.lora_layers, self.n_layers)
        #: lowest scored layer: nothing below it depends on the scored LoRA parameters
        self.l0 = self.scored_layers[0]
        #: decoder layer where the shared prefix enters every sample's sequence (None: the
        #: prefix is constant context, prefix="fixed")
        self.insert_layer = {"fixed": None, "exact": self.l0, "none": 0}[cfg.prefix]
        self._scored = [m for m in lora if m.layer in self.scored_layers]
        for p in pm.parameters():
            p.requires_grad_(False)
        for m in self._scored:
            m.B.weight.requires_grad_(True)
        with torch.no_grad():
            self._b_nonzero = bool(torch.stack([m.B.weight.abs().max()
                                                for m in self._scored]).max() > 0)
        self._lm = CausalLMParts.of(pm)
        self._layers = getattr(self._lm.decoder, "layers", None)
        if self._layers is None and cfg.prefix != "fixed":
            raise ConfigError(f"prefix={cfg.prefix!r} needs the decoder's `layers` list, which "
                              f"{type(self._lm.decoder).__name__} does not have; use "
                              "prefix='fixed'")
        self._attn_configs = attention_configs(self._lm.model)
        self.device = self._lm.device
        return pm

    # -- tokenisation and batches ---------------------------------------------------------------

    def template_for(self, dataset) -> PromptTemplate:
        return self.config.template or template_for(getattr(dataset, "name", ""))

    def prepare(self, dataset, rows=None) -> TokenizedSamples:
        """Build and tokenise the prompts of ``rows`` (all users by default)."""
        cfg = self.config
        tpl = self.template_for(dataset)
        records = build_records(dataset, rows, tpl, tokenizer=self.tokenizer,
                                cutoff_len=cfg.cutoff_len, add_eos=cfg.add_eos)
        return tokenize_records(records, self.tokenizer,
                                prefix_text=tpl.shared_prefix() if self.shares_prefix else "",
                                cutoff_len=cfg.cutoff_len, add_eos=cfg.add_eos,
                                loss_on=cfg.loss_on)

    @property
    def shares_prefix(self) -> bool:
        """Whether the prompt prefix shared by all samples is computed once: "fixed", and
        "exact" unless the lowest scored layer is layer 0 (then there is nothing to share and
        "exact" is the same computation as "none")."""
        return self.config.prefix == "fixed" or (self.config.prefix == "exact" and self.l0 > 0)

    @property
    def max_batch_tokens(self) -> int:
        if self.config.max_batch_tokens is not None:
            return self.config.max_batch_tokens
        return 8192 if self.device.type == "cuda" else 1024

    @property
    def packing(self) -> bool:
        if self.config.packing is not None:
            return bool(self.config.packing)
        return self.device.type != "cuda"

    @staticmethod
    def sorted_order(ts: TokenizedSamples) -> np.ndarray:
        """Samples by increasing length (ties by index): the processing and chunk order."""
        return np.argsort(ts.lengths, kind="stable")

    def batches(self, ts: TokenizedSamples, idx: np.ndarray) -> list[Batch]:
        """Split length-sorted samples ``idx`` into batches of at most ``max_batch_tokens`` tokens
        (real tokens when packing, padded batch size x longest length otherwise; with the
        prefix inserted per sample, its layer-averaged share counts too)."""
        extra = 0.0
        if self.insert_layer is not None and len(ts.prefix_ids):
            extra = len(ts.prefix_ids) * (self.n_layers - self.insert_layer) / self.n_layers
        return plan_batches(ts.lengths, idx, budget=self.max_batch_tokens, packing=self.packing,
                            extra=extra)

    def _chunks(self, ts: TokenizedSamples) -> list[np.ndarray]:
        """Sample positions of each cache chunk (``chunk_size`` samples in length order)."""
        cs = self.config.chunk_size
        order = self.sorted_order(ts)
        return [order[s:s + cs] for s in range(0, ts.n, cs)]

    # -- model passes ---------------------------------------------------------------------------

    def _prefix(self, ts: TokenizedSamples) -> SharedPrefix | None:
        """The shared prefix of ``ts`` run once (kept for the next call with the same one)."""
        if len(ts.prefix_ids) == 0:
            return None
        key = tuple(ts.prefix_ids.tolist())
        if key not in self._prefix_cache:
            self._prefix_cache = {key: run_shared_prefix(self._lm, ts.prefix_ids, self._ins,
                                                         self.insert_layer)}
        return self._prefix_cache[key]

    def _run_batch(self, ts: TokenizedSamples, idx: np.ndarray, prefix: SharedPrefix | None,
                   grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (mean loss, squared gradient norm) of one batch, on the model's device."""
        dev = self.device
        lay = build_layout(ts, idx, packing=self.packing,
                           inserted=prefix is not None and prefix.ins is not None,
                           loss_on=self.config.loss_on, pad_id=self.tokenizer.pad_token_id)
        B = lay.B
        ids = torch.as_tensor(lay.ids, device=dev)
        bi = torch.as_tensor(lay.bi, device=dev)
        flat = torch.as_tensor(lay.flat, device=dev)
        labels = torch.as_tensor(lay.labels, device=dev)
        w = torch.as_tensor(lay.w, device=dev, dtype=torch.float32)
        const = torch.zeros(B, device=dev, dtype=torch.float32)
        if prefix is not None and not lay.inserted:  # "fixed": the prefix's NLL is a constant
            if self.config.loss_on == "all":
                const = const + prefix.const_all
            if lay.first_tgt.any():
                first = torch.as_tensor(lay.first_tgt, device=dev)
                fl = prefix.first_logp[torch.as_tensor(lay.first_ids, device=dev)]
                const = const - torch.where(first, fl, 0.0)
        if prefix is not None and not lay.inserted and lay.segments is None:
            kwargs = {"past_key_values": expanded_cache(prefix.kv, ids.shape[0],
                                                        self._lm.config),
                      "use_cache": True}
        else:  # our attention takes the prefix keys/values directly
            kwargs = {"use_cache": False}
        if lay.positions is not None:
            kwargs["position_ids"] = torch.as_tensor(lay.positions, device=dev)
        sq = torch.zeros(B, device=dev, dtype=torch.float32)
        cap = self._cap
        cap.clear()
        cap.on = grad
        try:
            with torch.set_grad_enabled(grad), self._attention(lay, prefix), \
                    self._inserting(lay, prefix):
                h = self._lm.decoder(input_ids=ids, **kwargs).last_hidden_state
            h = h.reshape(-1, h.shape[-1])
            with torch.set_grad_enabled(grad):
                nll = self._lm.token_nll(h[flat], labels)
                del h
                wn = nll * w[bi]
                loss = (const + torch.zeros_like(const).index_add(0, bi, nll.detach())) * w
                if grad and wn.requires_grad:
                    keys = sorted(cap.outs)
                    grads = torch.autograd.grad(wn.sum(), [cap.outs[k] for k in keys],
                                                allow_unused=True)
                    sq = squared_norms(cap, keys, grads, lay, self._scored,
                                       with_a=self._b_nonzero, device=dev)
        finally:
            cap.on = False
            cap.clear()
        return loss, sq

    def _attention(self, lay: Layout, prefix: SharedPrefix | None):
        """Context: route attention through the per-sample kernel for this batch (packed rows,
        or an inserted prefix); padded batches otherwise use the model's own attention (with
        the expanded prefix cache for "fixed")."""
        if not (lay.inserted or lay.segments is not None):
            return contextlib.nullcontext()
        state = batch_state(lay, prefix, self.n_layers)
        return packed_attention(self._attn_configs, state)

    def _inserting(self, lay: Layout, prefix: SharedPrefix | None):
        """Context: the pre-hook of ``insert_layer`` prepends the prefix states per sample."""
        if not lay.inserted:
            return contextlib.nullcontext()
        gather = None if lay.gather is None else torch.as_tensor(lay.gather, device=self.device)
        return self._ins.inserting(prefix, gather)

    def _chunk_scores(self, ts: TokenizedSamples, idx: np.ndarray,
                      prefix: SharedPrefix | None, user_ids: np.ndarray,
                      on_batch: Callable[[Batch], None]) -> np.ndarray:
        """Effort scores of the samples ``idx`` (one cache chunk); ``on_batch`` after each
        batch. Non-finite losses or gradients raise a ScoringError naming the users."""
        losses, sqs = [], []
        for b in self.batches(ts, idx):
            loss, sq = self._run_batch(ts, b.idx, prefix, grad=True)
            losses.append(loss)
            sqs.append(sq)
            on_batch(b)
        loss = torch.cat(losses).double().cpu().numpy()
        sq = torch.cat(sqs).double().cpu().numpy()
        bad = ~(np.isfinite(loss) & np.isfinite(sq))
        if bad.any():
            who = user_ids[idx[bad]]
            raise ScoringError(
                f"non-finite LLM loss or gradient for {int(bad.sum())} sample(s), user "
                f"id(s) {', '.join(map(str, who[:10].tolist()))}"
                f"{' ...' if len(who) > 10 else ''} (loss {loss[bad][:3].tolist()}); "
                "check the model weights, dtype and these users' prompts")
        return np.sqrt(sq)

    # -- public API -----------------------------------------------------------------------------

    def fingerprint(self, ts: TokenizedSamples) -> dict:
        """What the scores of ``ts`` depend on (see :func:`~.cache.scores_fingerprint`)."""
        return scores_fingerprint(self.config, self._lm, self._scored, self.n_layers, ts)

    def score(self, dataset, rows=None, *, cache_dir: str | Path | None = None,
              progress: bool = True) -> np.ndarray:
        """Effort score of each user row (float64, aligned with ``rows``; all users if None).

        With ``cache_dir``, scores are stored there per chunk of ``chunk_size`` samples (see
        :mod:`~recprune.scoring.effort.cache`), each file written atomically: a rerun loads
        the chunks present and computes only the missing ones; a cache made with a different
        configuration, model or rows raises :class:`~recprune.errors.ConfigError` naming what
        differs. NaN/inf losses or gradients raise :class:`~recprune.errors.ScoringError`.
        """
        rows = np.arange(dataset.n_users) if rows is None else np.asarray(rows, dtype=np.int64)
        user_ids = np.asarray(dataset.user_ids)[rows] if len(rows) else np.zeros(0, np.int64)
        ts = self.prepare(dataset, rows)
        return self.score_tokenized(ts, user_ids=user_ids, rows=rows, cache_dir=cache_dir,
                                    progress=progress)

    def load_all_users(self, dataset, cache_dir: str | Path) -> np.ndarray:
        """Every user's effort score from a *complete* cache that :meth:`score` wrote for all
        users of ``dataset`` (``rows=None``) with this scorer's configuration, model and
        adapter initialisation. An effort score depends only on its own sample, so a candidate
        pool (any subset of users) can take its scores from there instead of recomputing them.
        Raises :class:`~recprune.errors.ConfigError` (naming what differs or what is missing)
        when the cache was made otherwise or is unfinished.
        """
        ts = self.prepare(dataset, None)
        chunks = self._chunks(ts)
        spec = cache_spec(self.fingerprint(ts), np.arange(ts.n, dtype=np.int64))
        store = open_finished(cache_dir, spec, len(chunks))
        scores = np.full(ts.n, np.nan, dtype=np.float64)
        missing = load_chunks(store, chunks, scores, warn=False)
        if missing:
            raise ConfigError(
                f"effort cache {cache_dir} is unfinished: {len(missing)} of {len(chunks)} chunks "
                f"are missing or unreadable (first {missing[:5]}); finish it by scoring all "
                "users into it, or compute the pool's effort scores instead")
        return scores

    def score_tokenized(self, ts: TokenizedSamples, *, user_ids: np.ndarray | None = None,
                        rows: np.ndarray | None = None, cache_dir: str | Path | None = None,
                        progress: bool = True) -> np.ndarray:
        """:meth:`score` on already tokenised samples."""
        n = ts.n
        user_ids = np.arange(n) if user_ids is None else np.asarray(user_ids)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        chunks = self._chunks(ts)
        scores = np.full(n, np.nan, dtype=np.float64)
        store = None
        todo = list(range(len(chunks)))
        if cache_dir is not None:
            store = open_cache(cache_dir, cache_spec(self.fingerprint(ts), rows), len(chunks))
            todo = load_chunks(store, chunks, scores, warn=True)
        loaded = [c for c in range(len(chunks)) if c not in todo]
        prefix = self._prefix(ts) if todo else None
        t0 = time.perf_counter()
        n_done = sum(len(chunks[c]) for c in loaded)
        done = n_done
        total_tokens = int(sum(ts.lengths[chunks[c]].sum() for c in todo))
        tokens_run = 0
        with progress_bar(progress) as bar:
            task = bar.add_task("effort score (tokens)", total=max(total_tokens, 1),
                                info=f"{done}/{n} samples")

            def on_batch(b: Batch) -> None:
                nonlocal done, tokens_run
                done += len(b.idx)
                tokens_run += b.tokens
                dt = time.perf_counter() - t0
                rate = f"{(done - n_done) / dt:.2f}" if dt > 0 else "-"
                bar.update(task, advance=int(ts.lengths[b.idx].sum()),
                           info=f"{done}/{n} samples, {rate} samples/s")

            for c in todo:
                vals = self._chunk_scores(ts, chunks[c], prefix, user_ids, on_batch)
                scores[chunks[c]] = vals
                if store is not None:
                    store.put(c, vals)
        self.last_run = {"n": n, "chunks_loaded": loaded, "chunks_computed": todo,
                         "seconds": time.perf_counter() - t0, "tokens_processed": tokens_run,
                         "tokens_real": total_tokens,
                         "prefix_tokens": len(ts.prefix_ids), "prefix": self.config.prefix,
                         "insert_layer": self.insert_layer}
        return scores

    def sample_losses(self, dataset_or_ts, rows=None, *, grad: bool = False) -> np.ndarray:
        """Per-sample mean loss; with ``grad=False`` a forward pass only (the same batches,
        layout, prefix handling and LM-head positions as :meth:`score`, used as its speed
        floor)."""
        ts = self._tokenized(dataset_or_ts, rows)
        out = np.zeros(ts.n)
        prefix = self._prefix(ts)
        for b in self.batches(ts, self.sorted_order(ts)):
            loss, _ = self._run_batch(ts, b.idx, prefix, grad=grad)
            out[b.idx] = loss.double().cpu().numpy()
        return out

    def reference_scores(self, dataset_or_ts, rows=None) -> np.ndarray:
        """Effort scores by one plain backward pass per sample (slow; see
        :func:`~recprune.scoring.effort.reference.reference_scores`)."""
        return reference_scores(self, self._tokenized(dataset_or_ts, rows))

    def _tokenized(self, dataset_or_ts, rows) -> TokenizedSamples:
        if isinstance(dataset_or_ts, TokenizedSamples):
            return dataset_or_ts
        return self.prepare(dataset_or_ts, rows)


def effort_scores(dataset, rows=None, *, model=None, config: EffortConfig | None = None,
                  cache_dir: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """Convenience wrapper: ``EffortScorer(model, config=config).score(dataset, rows, ...)``."""
    return EffortScorer(model, config=config).score(dataset, rows, cache_dir=cache_dir,
                                                    progress=progress)
