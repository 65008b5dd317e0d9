"""The scoring core of the local backend: audio and questions in, yes/no scores and text answers out.

Yes/no questions are scored from next-token logits in one forward pass per window, all of them
sharing the window's audio prefix (see `packing`); a batch of windows — of one room or of many —
goes through that forward together, one row per window. Free-text questions are answered by
greedy generation, those of a whole batch in one `generate()` (see `textgen`). The audio encoder
runs over each window's own frames rather than 30 s of padding where the loaded model passes the
check for it (see `encoder`). Packing, and batching windows, are likewise used only where the
load-time check finds them equal to the plain forward on this model (`selfcheck`, which uses the
public methods here: `fit`, `clip`, `score_windows`, `score_plain`).

What differs between model families — how a checkpoint is loaded, its prompt layout, its
positions, how a window becomes its inputs — is the family's (`monitor.engine.families`); this
class never names one. Requests, calibration and failures are the backend's (`engine.Engine`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monitor.engine import families
from monitor.engine.errors import ModelLoadError
from monitor.engine.families import Family
from monitor.engine.layouts import Clip, LayoutError
from monitor.engine.local.answers import AnswerHead, yes_no_from_logits, yes_no_token_ids
from monitor.engine.local.encoder import CroppedEncoder
from monitor.engine.local.inputs import Inputs, ProcessorInputs
from monitor.engine.local.packing import group_rows, pack_rows
from monitor.engine.local.positions import position_rule, sliding_window
from monitor.engine.local.selfcheck import cropped_encoder, fast_features_agree, packed_scoring, window_batching
from monitor.engine.local.textgen import RowBudgets, eos_ids, left_pad, right_pad, trim
from monitor.engine.placement import Placement
from monitor.engine.settings import ModelSettings
from monitor.engine.wav import fit

log = logging.getLogger(__name__)

# What one more forward pass costs, in tokens of a forward (see `group_rows`): on a GPU, launching a
# 7B model's kernels and reading its weights once is worth some hundreds of tokens; on a CPU the
# model is compute-bound from the first token and a forward's fixed cost is a few dozen tokens at
# most (measured on `small`: batching 4 equal 8 s windows saved ~15 tokens' time per window).
FORWARD_OVERHEAD_TOKENS = {"cuda": 256, "cpu": 16}


class Scorer:
    """A loaded model and its processor (or its family's model side), asked yes/no and text questions.

    `family`: the model's family; by default the one its config names (`families.of`). Construction
    runs the load-time checks (`selfcheck`) that choose its paths.
    """

    def __init__(self, model: Any, processor: Any, settings: ModelSettings, placement: Placement,
                 family: Family | None = None):
        self.model = model
        self.processor = processor
        self.settings = settings
        self.family = family if family is not None else families.of(model.config)
        self.max_batch = settings.max_batch
        self.placement = placement
        self.device = torch.device(placement.device)
        self.dtype = getattr(torch, placement.dtype)
        self.tokenizer = processor.tokenizer
        self.features = processor.feature_extractor
        self.sample_rate = int(self.features.sampling_rate)
        self.max_samples = int(getattr(self.features, "n_samples", 30 * self.sample_rate))
        try:
            self.layout = self.family.layout(processor, settings.system_prompt)
            yes, no = yes_no_token_ids(self.tokenizer)
        except LayoutError as exc:
            raise ModelLoadError(f"model {self.name}: {exc}") from None
        make_inputs = self.family.inputs
        self.inputs: Inputs = (ProcessorInputs(self.layout, self.device, self.dtype, self.family.frame_masks)  # type: ignore[arg-type]
                               if make_inputs is None else make_inputs(model, processor, self.layout, self.device))
        self.yes_ids = torch.tensor(yes, device=self.device)
        self.no_ids = torch.tensor(no, device=self.device)
        self._body = model.base_model if model.base_model is not model else None
        self._head = model.get_output_embeddings()
        # Gemma's logits are soft-capped after the head (cap * tanh(logits / cap)): applied to the answer rows too.
        self._softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        # the yes/no logits in float32 from the last hidden state, whatever the model's dtype (`AnswerHead`)
        self._answers = AnswerHead(self._head, self.yes_ids, self.no_ids)
        self._float_mask = self.dtype if settings.attn_implementation == "eager" else None
        self._gen_config = self._generation_config()
        self.forward_overhead = FORWARD_OVERHEAD_TOKENS.get(self.device.type, FORWARD_OVERHEAD_TOKENS["cuda"])
        self._pad_id = self.inputs.pad_id(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._eos = eos_ids(self._gen_config)
        # The fast prefix and the cropped encoder restate what the processor and the model do: checked
        # against them where there is a processor; a family's own model side has neither shortcut.
        processor_side = isinstance(self.inputs, ProcessorInputs)
        self._fast_features = fast_features_agree(self) if processor_side else True
        self.positions = position_rule(model, self.family)
        self.sliding_window = sliding_window(model)  # packed rows narrow the sliding layers' mask to it
        self.encoder: CroppedEncoder | None = cropped_encoder(self) if processor_side else None
        self.packed = False  # until checked: whether a window's questions share one packed row ...
        self.batch_windows = False  # ... and whether windows share forwards (and generate() calls)
        self.packed = packed_scoring(self)
        self.batch_windows = window_batching(self)

    @property
    def name(self) -> str:
        return self.settings.label

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        config = GenerationConfig.from_dict(self.model.generation_config.to_dict())
        config.do_sample = False  # greedy: the same audio gives the same words
        config.num_beams = 1
        config.temperature = config.top_p = config.top_k = None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    @property
    def scoring_path(self) -> str:
        """"packed" (a window's questions share its prefix in one row) or "batched" (one padded row each)."""
        return "packed" if self.packed else "batched"

    @property
    def encoder_path(self) -> str:
        """"cropped" (the encoder runs over each window's frames) or "padded" (over 30 s every time)."""
        return "cropped" if self.encoder is not None else "padded"

    # ------------------------------------------------------------------ inputs

    def fit(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 as the model hears it: cut at its longest (30 s), zero-padded to its shortest."""
        return fit(audio, self.sample_rate, self.max_samples, self.inputs.min_seconds)

    def clip(self, audio: np.ndarray) -> Clip:
        """A clip's prompt prefix and features, as every forward of this engine builds them."""
        return self._clip(self.fit(audio))

    def _clip(self, audio: np.ndarray) -> Clip:
        return self.inputs.clip(audio, self._fast_features)

    def _model_inputs(self, input_ids: torch.Tensor, clips: Sequence[Clip], keep_ids: bool = False) -> dict[str, Any]:
        return self.inputs.model_inputs(input_ids, clips, self.encoder, keep_ids)

    def _plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        return self.inputs.plain_inputs(audio, prompt)

    # ------------------------------------------------------------------ model calls (tests wrap them to count or fail)

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """Last hidden states of one packed forward (no LM head over every position: only the answers' rows)."""
        if self._body is not None:
            return self._body(**inputs, use_cache=False).last_hidden_state
        return self.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1]

    def _generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                  budgets: Sequence[int] | None = None) -> torch.Tensor:
        """Greedy generation; `budgets` (one per row, at most max_new_tokens) stops each row at its own."""
        config = copy.deepcopy(self._gen_config)
        config.max_new_tokens = max_new_tokens
        extra: dict[str, Any] = {}
        if budgets is not None:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList(
                [RowBudgets(inputs["input_ids"].shape[1], budgets, self.device)])
        return self.model.generate(**inputs, generation_config=config, **extra)

    # ------------------------------------------------------------------ yes/no

    @torch.inference_mode()
    def score(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """{prompt: (P(yes)/(P(yes)+P(no)), P(yes)+P(no))} for every distinct prompt, in one forward pass."""
        return self.score_windows([audio], [prompts])[0]

    @torch.inference_mode()
    def score_windows(self, audios: Sequence[np.ndarray], prompts: Sequence[Sequence[str]], packed: bool | None = None,
                      overhead: int | None = None) -> list[dict[str, tuple[float, float]]]:
        """`score` of several windows, each with its own prompts.

        Packed (where the load-time check found it equal to the plain forward): one forward for
        all windows, each window one row of its prefix and its questions (`_score_packed`).
        Otherwise batched: per window, one padded batch of its full prompts (`_score_batched`).
        Prompts that cannot share the prefix are scored the plain way, each alone. `packed` and
        `overhead` (of one more forward, see `group_rows`) override the load-time choices: the
        self-check asks for each path, and for all windows in one forward, this way.
        """
        windows = [self.fit(a) for a in audios]
        unique = [list(dict.fromkeys(p)) for p in prompts]
        if self.packed if packed is None else packed:
            got = self._score_packed(windows, unique, overhead)
        else:
            got = self._score_batched(windows, unique)
        return [{p: got[(i, p)] if (i, p) in got else self._score_plain_one(windows[i], p) for p in wanted}
                for i, wanted in enumerate(unique)]

    def _shared(self, windows: Sequence[np.ndarray], unique: Sequence[list[str]]) -> list[tuple[int, Clip, list[tuple[str, list[int]]]]]:
        """(window index, its clip, [(prompt, suffix ids)]) of every window with prompts that share the prefix."""
        out = []
        for i, (audio, wanted) in enumerate(zip(windows, unique, strict=True)):
            shared = [(p, ids) for p in wanted if (ids := self.layout.suffix_ids(p)) is not None]
            if shared:
                out.append((i, self._clip(audio), shared))
        return out

    def _score_packed(self, windows: Sequence[np.ndarray], unique: Sequence[list[str]],
                      overhead: int | None = None) -> dict[tuple[int, str], tuple[float, float]]:
        """{(window, prompt): (score, mass)} from packed rows, one per window (see `pack_rows`).

        A question's logits do not depend on the other rows. Windows of very different lengths
        are split into a few forwards where padding the short ones would cost more than another
        forward (`group_rows`, `forward_overhead`).
        """
        shared = self._shared(windows, unique)
        rows = [(clip.ids, [ids for _, ids in questions]) for _, clip, questions in shared]
        got: dict[tuple[int, str], tuple[float, float]] = {}
        sizes = [len(prefix) + sum(len(s) for s in suffixes) for prefix, suffixes in rows]
        if overhead is None and not self.batch_windows:
            groups = [[r] for r in range(len(rows))]
        else:
            groups = group_rows(sizes, self.forward_overhead if overhead is None else overhead)
        for group in groups:
            packed = pack_rows([rows[r] for r in group], self.device, self._float_mask, self._pad_id,
                               self.sliding_window)
            inputs = self._model_inputs(packed.input_ids, [shared[r][1] for r in group])
            positions = self.positions.positions(packed, [len(shared[r][1].ids) for r in group],
                                                 [shared[r][1].features for r in group])
            hidden = self._forward(**inputs, position_ids=positions, attention_mask=packed.attention_mask)
            keys = [(shared[r][0], p) for r in group for p, _ in shared[r][2]]
            got.update(self._yes_no(hidden[packed.row, packed.last], keys))
        return got

    def _score_batched(self, windows: Sequence[np.ndarray],
                       unique: Sequence[list[str]]) -> dict[tuple[int, str], tuple[float, float]]:
        """{(window, prompt): (score, mass)}: per window, its full prompts as one right-padded batch.

        Each row is exactly its plain prompt (the model's own positions and mask rules apply; the
        padding comes after the last real token, so it changes nothing before it). With the cropped
        encoder the audio is encoded once per window and shared by the rows.
        """
        got: dict[tuple[int, str], tuple[float, float]] = {}
        for i, clip, questions in self._shared(windows, unique):
            rows = [clip.ids + ids for _, ids in questions]
            ids, mask = right_pad(rows, self._pad_id, self.device)
            inputs = self._model_inputs(ids, [clip] * len(rows))
            hidden = self._forward(**inputs, attention_mask=mask)
            last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
            got.update(self._yes_no(hidden[torch.arange(len(rows), device=self.device), last],
                                    [(i, p) for p, _ in questions]))
        return got

    def _logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits of some rows' last hidden states, as the model's own forward makes them."""
        return _capped(self._head(last_hidden), self._softcap)

    def _answer_logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """The yes and the no logits of some rows' last hidden states in float32 (`AnswerHead`), soft-capped."""
        return _capped(self._answers(last_hidden), self._softcap)

    def _yes_no(self, last_hidden: torch.Tensor, keys: list[tuple[int, str]]) -> dict[tuple[int, str], tuple[float, float]]:
        scores, masses = yes_no_from_logits(self._logits(last_hidden), self.yes_ids, self.no_ids,
                                            self._answer_logits(last_hidden))
        return dict(zip(keys, zip(scores.tolist(), masses.tolist(), strict=True), strict=True))

    @torch.inference_mode()
    def score_plain(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """The reference: each prompt alone, through the processor and a full forward (slow; for checks)."""
        audio = self.fit(audio)
        return {p: self._score_plain_one(audio, p) for p in dict.fromkeys(prompts)}

    def _score_plain_one(self, audio: np.ndarray, prompt: str) -> tuple[float, float]:
        last: list[torch.Tensor] = []  # what the model's own forward feeds its LM head at the last position
        hook = self._head.register_forward_hook(lambda module, args, out: last.append(args[0][:, -1]))
        try:
            logits = self.model(**self._plain_inputs(audio, prompt), use_cache=False).logits[:, -1]
        finally:
            hook.remove()
        # the model's own forward soft-caps its logits as its config says: so do its answers' here
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        answers = _capped(self._answers(last[-1]), cap) if last else None
        score, mass = yes_no_from_logits(logits, self.yes_ids, self.no_ids, answers)
        return float(score[0]), float(mass[0])

    # ------------------------------------------------------------------ text

    @torch.inference_mode()
    def answer_text(self, audio: np.ndarray, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy answer to a free-text question about a clip, without any chat-template text."""
        return self.answer_texts([(audio, prompt, max_new_tokens)])[0]

    @torch.inference_mode()
    def answer_texts(self, questions: Sequence[tuple[np.ndarray, str, int]]) -> list[str]:
        """`answer_text` of several (clip, prompt, max_new_tokens), in one batched generate().

        Each answer is the one `answer_text` gives alone (see `textgen`). A prompt that cannot
        share the prefix layout is answered alone, through the processor.
        """
        answers: list[str] = [""] * len(questions)
        batch: list[tuple[int, Clip, list[int], int]] = []
        for i, (audio, prompt, max_new_tokens) in enumerate(questions):
            audio = self.fit(audio)
            budget = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
            suffix = self.layout.suffix_ids(prompt)
            if suffix is None:
                inputs = self._plain_inputs(audio, prompt)
                out = self._generate(inputs, budget)
                answers[i] = self._decode(out[0, inputs["input_ids"].shape[1]:].tolist(), budget)
            else:
                batch.append((i, self._clip(audio), suffix, budget))
        chunks = [batch] if self.batch_windows else [[one] for one in batch]
        for chunk in (c for c in chunks if c):
            ids, mask = left_pad([clip.ids + suffix for _, clip, suffix, _ in chunk], self._pad_id, self.device)
            inputs = {**self._model_inputs(ids, [clip for _, clip, _, _ in chunk], keep_ids=True), "attention_mask": mask}
            budgets = [budget for *_, budget in chunk]
            top = max(budgets)
            out = self._generate(inputs, top) if min(budgets) == top else self._generate(inputs, top, budgets)
            for row, (i, *_, budget) in enumerate(chunk):
                answers[i] = self._decode(out[row, ids.shape[1]:].tolist(), budget)
        return answers

    def _decode(self, new_tokens: list[int], budget: int) -> str:
        return self.tokenizer.decode(trim(new_tokens, budget, self._eos), skip_special_tokens=True).strip()


def _capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's soft-cap of its logits, cap · tanh(logits / cap) (none: as they are)."""
    return torch.tanh(logits / cap) * cap if cap else logits
