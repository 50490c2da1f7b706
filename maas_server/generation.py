"""Text generation: the decode loop of a ``"task": "text-generation"`` model.

The model is an ONNX decoder in Hugging Face Optimum's layout (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.N.key/value`` in; ``logits``, ``present.N.key/value`` out).
Each model version gets one :class:`GenerationEngine`, created on first use, whose thread runs
every sequence of that model:

- a new sequence is prefilled alone (its whole prompt, past length 0), then joins the decode
  batch. All sequences of the batch advance together, one token each per ``session.run``: their
  KV caches are left-padded to a common length and the padding is masked out with
  ``attention_mask`` zeros, while ``position_ids`` carry each sequence's own positions. Every
  active sequence gets a token at every step, which is what makes concurrent streams fair.
- the ``present`` outputs of a step are the next step's ``past`` inputs as they are; they are
  copied only when a sequence joins or leaves the batch. With IO binding (on by default with a
  GPU provider) they stay in the provider's memory between steps.
- a sequence ends on an end-of-sequence token, a stop string, ``max_tokens`` or the context
  length, or at once when its client goes away (:meth:`GenerationStream.cancel`): it leaves the
  batch before the next step.

The batch bookkeeping (which rows are live, padding, masks, positions, joining and leaving) is
:class:`~maas_server.kv_batch.KVBatch`, plain numpy; this module is the loop that runs the model.

Models whose graph fixes the batch size at 1 (or has no ``attention_mask``) are stepped one
sequence after the other instead, still round-robin.

The engine thread hands each sequence's token ids to its :class:`GenerationStream` on the event
loop, which turns them into :class:`GenerationEvent` objects: one per new piece of text (complete
UTF-8, stop strings held back and cut), and a last one with the finish reason and the token
counts. Detokenizing there keeps it off the decode loop's critical path.

>>> engine = service.engine("tiny_gpt", None)
>>> params = engine.params({"max_tokens": 8, "temperature": 0})
>>> async with engine.submit(engine.encode("Copyright"), params) as stream:
...     result = await stream.collect()
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from .batching import QueueFullError, retry_headers
from .config import GenerationConfig
from .decoder import DecoderLayout, DecoderLayoutError
from .errors import BadRequestError, InternalError, ModelUnavailableError, ServerError
from .generation_stream import (
    CLOSED,
    GenerationStream,
    SequenceEnd,
    TokenChannel,
    notify,
)
from .kv_batch import KVBatch
from .repository import ModelRepository
from .runtime import OnnxModel
from .sampling import SamplingParams, TokenSampler
from .stats import ModelStats
from .tokenizer import TextTokenizer, TokenizerError

__all__ = ["GenerationEngine", "GenerationParams", "GenerationService"]

logger = logging.getLogger("maas_server")

MAX_STOP_STRINGS = 16
_IDLE_SECONDS = 2.0
_RETRY_AFTER_SECONDS = 1.0  # suggested when too many sequences wait
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks for; :meth:`parse` fills in the model's defaults and checks values."""

    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def parse(cls, values: Mapping[str, Any], defaults: GenerationConfig) -> GenerationParams:
        """Parameters from a request (``None`` means the default); 400 on a bad value."""

        def get(key: str) -> Any:
            value = values.get(key)
            return getattr(defaults, key) if value is None else value

        max_tokens = _integer("max_tokens", get("max_tokens"), minimum=1)
        if max_tokens > defaults.max_tokens_limit:
            raise BadRequestError(
                f"parameter 'max_tokens' is {max_tokens}; this model generates at most "
                f"{defaults.max_tokens_limit} tokens per request"
            )
        temperature = _number("temperature", get("temperature"))
        if temperature < 0:
            raise BadRequestError(f"parameter 'temperature' must be >= 0, not {temperature}")
        top_k = _integer("top_k", get("top_k"), minimum=-1)
        top_p = _number("top_p", get("top_p"))
        if not 0 < top_p <= 1:
            raise BadRequestError(f"parameter 'top_p' must lie in (0, 1], not {top_p}")
        seed = values.get("seed")
        if seed is not None:
            seed = _integer("seed", seed, minimum=0)
            if seed >= 2**64:
                raise BadRequestError("parameter 'seed' must be below 2**64")
        stop = get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequestError("parameter 'stop' must be a non-empty string or a list of them")
        if len(stop) > MAX_STOP_STRINGS:
            raise BadRequestError(f"parameter 'stop' takes at most {MAX_STOP_STRINGS} strings")
        ignore_eos = values.get("ignore_eos")
        if ignore_eos is None:
            ignore_eos = False
        elif not isinstance(ignore_eos, bool):
            raise BadRequestError("parameter 'ignore_eos' must be true or false")
        sampling = SamplingParams(
            temperature=temperature, top_k=max(top_k, 0), top_p=top_p, seed=seed
        )
        return cls(max_tokens, sampling, tuple(stop), ignore_eos)


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequestError(f"parameter {name!r} must be an integer >= {minimum}, not {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise BadRequestError(f"parameter {name!r} must be a number, not {value!r}")
    return float(value)


# --- one sequence ---------------------------------------------------------------------------


class _Sequence:
    """One prompt being continued: touched by the engine thread only, except ``cancelled``."""

    __slots__ = (
        "arrival_ns",
        "cancelled",
        "channel",
        "eager",
        "eos",
        "finished",
        "generated",
        "infer_ns",
        "limit",
        "params",
        "prompt",
        "queued",
        "sampler",
        "started_ns",
        "stopped",
        "succeeded",
        "woken",
    )

    def __init__(
        self,
        prompt: list[int],
        params: GenerationParams,
        limit: int,
        eos: frozenset[int],
        channel: TokenChannel,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.limit = limit
        self.eos = frozenset() if params.ignore_eos else eos
        self.sampler = TokenSampler(params.sampling)
        self.channel = channel
        self.generated = 0
        self.queued = True  # counted in the engine's waiting sequences (under its lock)
        self.woken = -math.inf
        self.eager = True  # every token wakes the consumer until it has sent its first text
        self.cancelled = False
        self.stopped = False  # cancelled by its stream on a stop string: complete, not cancelled
        self.finished = False
        self.succeeded = False  # ended on EOS or its limit
        self.arrival_ns = time.perf_counter_ns()  # submitted
        self.started_ns = 0  # its prefill started
        self.infer_ns = 0  # session runs it took part in

    def accept(
        self, token: int, now: float, interval: float, wake: list[asyncio.Future[None]]
    ) -> bool:
        """Hand the next token over; True when the sequence has ended.

        The consumer is woken (its waiter added to ``wake``) at most once per ``interval``
        seconds while tokens keep coming, and always for the last one and for every one until
        the first piece of text is out: a fast model's tokens then reach the event loop a few at
        a time instead of one wake-up each, without delaying the first.
        """
        self.generated += 1
        if token in self.eos:
            ended = SequenceEnd("stop", token)
        else:
            due = self.eager or now - self.woken >= interval
            waiter = self.channel.put(token, due)
            if due:
                self.woken = now
                if waiter is not None:
                    wake.append(waiter)
            if self.generated < self.limit:
                return False
            ended = SequenceEnd("length")
        self.finished = True
        self.succeeded = True
        waiter = self.channel.put(ended)
        if waiter is not None:
            wake.append(waiter)
        return True

    def text_started(self) -> None:
        """The consumer has sent its first text: wake it at the usual pace from now on."""
        self.eager = False

    def fail(self, error: ServerError) -> None:
        self.finished = True
        self.channel.send(error)


# --- the engine -----------------------------------------------------------------------------


class _Batch(KVBatch[_Sequence]):
    """The engine's batch: a :class:`KVBatch` of sequences that knows whether all are greedy."""

    greedy = True

    def changed(self) -> None:
        self.greedy = all(s.sampler.greedy for s in self.rows)


def _notifier(waiters: queue.SimpleQueue[list[asyncio.Future[None]] | None]) -> None:
    """Wake consumers on behalf of an engine thread.

    Waking an event loop is a write to its self-pipe, a system call that lets go of the GIL;
    the loop's thread, woken by it, often takes the GIL first and keeps it while it sends what
    it received, and a decode thread that made the call would wait all that time before its
    next step. This thread makes the call instead, while the decode thread runs the model.
    """
    while (batch := waiters.get()) is not None:
        notify(batch)


class GenerationEngine:
    """The decode loop of one model version (see the module's docstring).

    ``steps`` (session runs), ``tokens`` (tokens generated) and ``largest_batch`` (most rows in
    one decode step) count what the engine did; ``active_sequences`` is what it still has to do.

    Every sequence counts in the model version's :class:`~maas_server.stats.ModelStats` as one
    request, the way Triton counts a decoupled model's requests (an OpenAI request with ``n``
    choices or several prompts counts as that many):

    - ``pending`` from :meth:`submit` until the engine lets go of the sequence;
    - a sequence that ends on EOS, its limit or a stop string is a success (``inference_count``
      +1): ``success`` is the time from :meth:`submit` until the engine lets go of it,
      ``queue`` the time until its prefill started, ``compute_infer`` the wall time of the
      session runs it took part in (its prefill and each decode step of its batch, attributed
      per step; sampling and handing tokens over are not counted), ``compute_input`` and
      ``compute_output`` 0;
    - one that its client cancels (a disconnect) is a failure with reason ``cancelled``; one
      that a failed session run ends, ``execution_error``; one that a shutdown or an unload
      ends, ``unavailable``;
    - every ``session.run`` counts once in ``execution_count`` and in the ``batch_stats`` of
      its number of rows, with its wall time as ``compute_infer``, however many sequences it
      advanced (so ``execution_count`` equals :attr:`steps`).

    The decode loop adds each step's time to its sequences' plain ints and takes the statistics'
    lock once per session run and once per group of sequences it lets go of.
    """

    def __init__(
        self, model: OnnxModel, tokenizer: TextTokenizer, stats: ModelStats | None = None
    ) -> None:
        self.model_name = model.name
        self.model_version = str(model.version)
        self.tokenizer = tokenizer
        self.layout = DecoderLayout.of(model)
        self.defaults = model.config.generation or GenerationConfig()
        eos = self.defaults.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids = frozenset([eos] if isinstance(eos, int) else eos or [])
        self.bos_token_id = (
            self.defaults.bos_token_id
            if self.defaults.bos_token_id is not None
            else tokenizer.bos_token_id
        )
        self.context_length = self.defaults.context_length
        self.max_active = self.defaults.max_batch_size
        self.stream_interval = self.defaults.stream_interval_ms / 1000
        cuda = any(p in _CUDA_PROVIDERS for p in model.providers)
        io_binding = self.defaults.io_binding
        self.io_binding = cuda if io_binding is None else io_binding
        self._device = "cuda" if cuda else "cpu"
        self._device_id = (model.config.device_ids or [0])[0] if cuda else 0
        self._model_ref = weakref.ref(model)
        self._stats = stats if stats is not None else ModelStats()
        self._cond = threading.Condition()
        self._incoming: deque[_Sequence] = deque()
        self._running = False
        self._closed = False
        self._cancel_pending = False
        self._thread: threading.Thread | None = None
        self._wakes: queue.SimpleQueue[list[asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._active = 0
        self._queued = 0  # submitted, not yet in a batch (nor cancelled)
        self.max_request_sequences = self.defaults.max_request_sequences
        self.max_waiting = self.defaults.max_waiting_sequences
        # engine thread only
        self._waiting: deque[_Sequence] = deque()
        self._batches: list[_Batch] = []
        self.steps = 0
        self.tokens = 0
        self.largest_batch = 0

    # --- event loop side ---------------------------------------------------------------------

    @property
    def active_sequences(self) -> int:
        """Sequences submitted and not yet ended (finished, failed or cancelled)."""
        return self._active

    @property
    def waiting_sequences(self) -> int:
        """Sequences submitted that wait for room in the batch."""
        return self._queued

    def check_capacity(self, count: int) -> None:
        """Whether a request of ``count`` sequences may start: 400 above the model's
        ``max_request_sequences``; 503 with ``Retry-After`` when more than
        ``max_waiting_sequences`` would wait for room in the batch (``max_batch_size`` rows).
        Nothing is reserved: submit right after, on the event loop, with no ``await`` between."""
        if count > self.max_request_sequences:
            raise BadRequestError(
                f"the request would start {count} sequences (prompts x n); model "
                f"{self.model_name!r} takes at most {self.max_request_sequences} per request"
            )
        # what the batch has no room for waits
        if self._active + count > self.max_active + self.max_waiting:
            raise QueueFullError(
                f"model {self.model_name!r} is at its limit of {self.max_waiting} sequences "
                f"waiting for room in its batch of {self.max_active}; retry later",
                headers=retry_headers(_RETRY_AFTER_SECONDS),
            )

    def params(self, values: Mapping[str, Any]) -> GenerationParams:
        return GenerationParams.parse(values, self.defaults)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def check_prompt(self, prompt: Sequence[int]) -> list[int]:
        """The prompt's ids, checked: not empty (the BOS token stands in when there is one),
        inside the vocabulary, and leaving room for a token in the context."""
        ids = [int(t) for t in prompt]
        if not ids:
            if self.bos_token_id is None:
                raise BadRequestError("the prompt is empty and the model has no BOS token")
            ids = [self.bos_token_id]
        vocab = self.layout.vocab_size or self.tokenizer.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise BadRequestError(f"prompt token ids must lie in 0..{vocab - 1}")
        if self.context_length is not None and len(ids) >= self.context_length:
            raise BadRequestError(
                f"the prompt has {len(ids)} tokens; model {self.model_name!r} takes at most "
                f"{self.context_length - 1} (its context is {self.context_length} tokens)"
            )
        return ids

    def submit(self, prompt: Sequence[int], params: GenerationParams) -> GenerationStream:
        """Start generating after ``prompt``; call it on the event loop that reads the stream."""
        ids = self.check_prompt(prompt)
        limit = params.max_tokens
        if self.context_length is not None:
            limit = min(limit, self.context_length - len(ids))
        channel = TokenChannel(asyncio.get_running_loop())
        sequence = _Sequence(ids, params, limit, self.eos_token_ids, channel)
        stream = GenerationStream(
            channel,
            len(ids),
            self.tokenizer.detokenizer(ids),
            params.stop,
            cancel=lambda completed: self.cancel(sequence, completed),
            text_started=sequence.text_started,
        )
        with self._cond:
            if self._closed:
                raise ModelUnavailableError(f"model {self.model_name!r} is shutting down")
            if self._active >= self.max_active + self.max_waiting:
                self.check_capacity(1)
            self._incoming.append(sequence)
            self._queued += 1
            self._active += 1
            self._stats.add_pending(1)
            if self._running:
                self._cond.notify()
            else:
                self._running = True
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"maas-generate-{self.model_name}-{self.model_version}",
                    daemon=True,
                )
                self._thread.start()
                threading.Thread(
                    target=_notifier,
                    args=(self._wakes,),
                    name=f"maas-notify-{self.model_name}-{self.model_version}",
                    daemon=True,
                ).start()
        return stream

    def cancel(self, sequence: _Sequence, completed: bool = False) -> None:
        """Take a sequence out before the engine's next step (any thread); ``completed``: its
        stream has ended it on a stop string (a success, not a cancelled request)."""
        if completed:
            sequence.stopped = True
        self._dequeue(sequence)
        sequence.cancelled = True
        self._cancel_pending = True
        sequence.channel.send(CLOSED)

    def close(self, timeout: float = 10.0) -> None:
        """Fail what is still running and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _dequeue(self, sequence: _Sequence) -> None:
        """The sequence no longer waits (it joins a batch, or is cancelled); any thread."""
        with self._cond:
            if sequence.queued:
                sequence.queued = False
                self._queued -= 1

    # --- engine thread -----------------------------------------------------------------------

    def _ended(self, sequences: Sequence[_Sequence]) -> None:
        """The engine lets go of ``sequences``: counted in the statistics, no longer active."""
        self._record(sequences)
        with self._cond:
            self._active -= len(sequences)

    def _record(self, sequences: Sequence[_Sequence], reason: str = "execution_error") -> None:
        """Count ended sequences in the model's statistics (see the class docstring); ``reason``
        is that of those that neither completed nor were cancelled."""
        if not sequences:
            return
        now = time.perf_counter_ns()
        successes: list[tuple[int, int, int]] = []
        failures: list[tuple[int, str]] = []
        for s in sequences:
            total = now - s.arrival_ns
            if s.succeeded or s.stopped:
                successes.append((total, s.started_ns - s.arrival_ns, s.infer_ns))
            else:
                failures.append((total, "cancelled" if s.cancelled else reason))
        self._stats.record_requests(successes, failures)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._wakes.put(None)  # ends the notifier thread started with this one

    def _loop(self) -> None:
        model = self._model_ref()
        if model is None:
            with self._cond:
                self._fail_all(ModelUnavailableError(f"model {self.model_name!r} was unloaded"))
                self._running = False
            return
        try:
            while True:
                if self._incoming or self._closed or not (self._waiting or self._batches):
                    with self._cond:
                        if not (self._incoming or self._waiting or self._batches or self._closed):
                            self._cond.wait(_IDLE_SECONDS)
                        if self._closed:
                            self._fail_all(
                                ModelUnavailableError(f"model {self.model_name!r} is shutting down")
                            )
                            self._running = False
                            return
                        self._waiting.extend(self._incoming)
                        self._incoming.clear()
                        if not (self._waiting or self._batches):
                            self._running = False
                            return
                if self._cancel_pending:
                    self._cancel_pending = False
                    for batch in list(self._batches):
                        if any(s.cancelled for s in batch.rows):
                            self._compact(batch)
                # one instance for the whole round: /infer calls to the model take turns with it
                with model.session() as session:
                    if self._waiting:
                        self._admit(session)
                    for batch in list(self._batches):
                        self._step(session, batch)
        except BaseException as exc:  # a bug here must not leave streams hanging
            logger.exception("the generation loop of model %s failed", self.model_name)
            with self._cond:
                self._fail_all(InternalError(f"the generation loop failed: {exc}"))
                self._running = False
            raise

    def _fail_all(self, error: ServerError) -> None:
        """Fail every sequence (with ``self._cond`` held)."""
        sequences = [*self._incoming, *self._waiting]
        sequences += [s for batch in self._batches for s in batch.rows]
        self._incoming.clear()
        self._waiting.clear()
        self._batches.clear()
        self._queued = 0
        for sequence in sequences:
            sequence.queued = False
            if not sequence.finished:
                sequence.fail(error)
        unavailable = isinstance(error, ModelUnavailableError)
        self._record(sequences, "unavailable" if unavailable else "execution_error")
        self._active -= len(sequences)

    def _admit(self, session: ort.InferenceSession) -> None:
        """Prefill waiting sequences while there is room, and merge them into the batch."""
        room = self.max_active - sum(len(b.rows) for b in self._batches)
        joined: list[_Batch] = []
        while self._waiting and room > 0:
            sequence = self._waiting.popleft()
            self._dequeue(sequence)
            if sequence.cancelled:
                self._ended([sequence])
                continue
            try:
                single = self._prefill(session, sequence)
            except Exception as exc:
                logger.exception("prefill failed on model %s", self.model_name)
                sequence.fail(
                    InternalError(f"generation failed on model {self.model_name!r}: {exc}")
                )
                self._ended([sequence])
                continue
            if single is None:
                self._ended([sequence])
                continue
            room -= 1
            if self.layout.batchable:
                joined.append(single)
            else:
                self._batches.append(single)
        if joined:
            current = self._batches[0] if self._batches else None
            self._batches[:] = [_Batch.merge([current, *joined] if current else joined)]

    def _execute(
        self,
        session: ort.InferenceSession,
        ids: np.ndarray[Any, Any],
        mask: np.ndarray[Any, Any],
        positions: np.ndarray[Any, Any],
        past: Sequence[Any],
    ) -> tuple[np.ndarray[Any, Any], list[Any], int]:
        """One ``session.run``: the last position's logits, the ``present`` tensors and the
        run's nanoseconds (counted in the model's statistics)."""
        layout = self.layout
        feeds: dict[str, Any] = {"input_ids": ids}
        if layout.has_attention_mask:
            feeds["attention_mask"] = mask
        if layout.has_position_ids:
            feeds["position_ids"] = positions
        if layout.has_cache_branch:
            feeds["use_cache_branch"] = np.array([mask.shape[1] > ids.shape[1]])
        start = time.perf_counter_ns()
        if not self.io_binding:
            feeds.update(zip(layout.past_names, past, strict=True))
            outputs = session.run(layout.output_names, feeds)
            logits = outputs[0]
            present: list[Any] = outputs[1:]
        else:
            binding = session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            for name, value in zip(layout.past_names, past, strict=True):
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:
                    binding.bind_ortvalue_input(name, value)
            binding.bind_output("logits", "cpu")
            for name in layout.present_names:
                binding.bind_output(name, self._device, self._device_id)
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
            logits = values[0].numpy()
            present = list(values[1:])
        elapsed = time.perf_counter_ns() - start
        self.steps += 1
        self._stats.record_batch(int(ids.shape[0]), 0, elapsed, 0)
        return logits[:, -1, :], present, elapsed

    def _prefill(self, session: ort.InferenceSession, sequence: _Sequence) -> _Batch | None:
        """Run the prompt; the sequence as a batch of one, or None when it already ended."""
        length = len(sequence.prompt)
        dtype = self.layout.ids_dtype
        mask = np.ones((1, length), dtype=np.int64)
        sequence.started_ns = time.perf_counter_ns()
        logits, present, elapsed = self._execute(
            session,
            np.array([sequence.prompt], dtype=dtype),
            mask,
            np.arange(length, dtype=np.int64)[None, :],
            self.layout.empty_past,
        )
        sequence.infer_ns = elapsed
        token = sequence.sampler.choose(logits[0])
        self.tokens += 1
        wake: list[asyncio.Future[None]] = []
        ended = sequence.accept(token, time.perf_counter(), self.stream_interval, wake)
        if wake:
            notify(wake)  # the first token: no detour through the notifier thread
        if ended:
            return None
        return _Batch.single(sequence, present, length, token, dtype)

    def _step(self, session: ort.InferenceSession, batch: _Batch) -> None:
        """One token for every sequence of the batch."""
        sequences = batch.rows
        rows = len(sequences)
        if rows > self.largest_batch:
            self.largest_batch = rows
        mask = batch.next_mask()
        try:
            logits, present, elapsed = self._execute(
                session, batch.last, mask, batch.positions, batch.past
            )
            tokens = logits.argmax(axis=1)
            if not batch.greedy:
                for row, sequence in enumerate(sequences):
                    if not sequence.sampler.greedy:
                        tokens[row] = sequence.sampler.choose(logits[row])
        except Exception as exc:
            logger.exception("decode step failed on model %s", self.model_name)
            error = InternalError(f"generation failed on model {self.model_name!r}: {exc}")
            for sequence in sequences:
                if not sequence.cancelled:
                    sequence.fail(error)
            self._ended(sequences)
            self._batches.remove(batch)
            return
        batch.advance(mask, present, tokens, self.layout.ids_dtype)
        self.tokens += rows
        wake: list[asyncio.Future[None]] = []
        ended = False
        now = time.perf_counter()
        interval = self.stream_interval
        first_text = False  # a stream still waiting for its first text is woken directly
        for sequence, token in zip(sequences, tokens.tolist(), strict=True):
            sequence.infer_ns += elapsed
            first_text = first_text or sequence.eager
            if sequence.accept(token, now, interval, wake):
                ended = True
        if wake:
            if first_text:
                notify(wake)
            else:
                self._wakes.put(wake)
        if ended:
            self._compact(batch)

    def _compact(self, batch: _Batch) -> None:
        """Drop ended and cancelled rows (and the padding no row needs any more)."""
        gone = [s for s in batch.rows if s.finished or s.cancelled]
        self._ended(gone)
        batch.keep([i for i, s in enumerate(batch.rows) if not (s.finished or s.cancelled)])
        if not batch.rows:
            self._batches.remove(batch)


# --- the engines of a repository ------------------------------------------------------------


class GenerationService:
    """The generation engines of a repository's models, one per loaded version, made on first
    use. An engine lives as long as its model version stays loaded (or finishes its streams).

    >>> service = GenerationService(repository)
    >>> engine = service.engine("tiny_gpt", None)
    """

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def engine(self, name: str, version: str | None) -> GenerationEngine:
        """The engine of a text-generation model; 404/503 as for inference, 400 for a model
        that does not generate text."""
        model = self.repository.get(name, version)
        if isinstance(model.engine, GenerationEngine):
            return model.engine
        if model.config.task != "text-generation":
            raise BadRequestError(
                f'model {name!r} is not a text-generation model; set "task": '
                '"text-generation" in its configuration to generate with it'
            )
        settings = model.config.generation or GenerationConfig()
        try:
            tokenizer = TextTokenizer.load(
                self.repository.model_dir(name), settings.tokenizer, settings.tokenizer_config
            )
            engine = GenerationEngine(model.onnx, tokenizer, model.stats)
        except (TokenizerError, DecoderLayoutError) as exc:
            raise ModelUnavailableError(f"model {name!r} cannot generate text: {exc}") from None
        attached = model.attach_engine(engine)  # the version owns and closes it
        assert isinstance(attached, GenerationEngine)
        return attached

    def engines(self) -> list[GenerationEngine]:
        return [
            m.engine
            for m in self.repository.loaded_models()
            if isinstance(m.engine, GenerationEngine)
        ]

    def model_names(self) -> list[str]:
        """Names of the loaded text-generation models."""
        names = {
            m.name for m in self.repository.loaded_models() if m.config.task == "text-generation"
        }
        return sorted(names)

    def close(self) -> None:
        for engine in self.engines():
            engine.close()
