"""What every VLM judge shares: three prompts per image, the response cache or the archive,
parsing, the vote, the unsure policy, and the Prediction with its raw responses.

A judge needs each image's category (prompts 1 and 2 insert its definition) and, for the
``wrong`` unsure policy, its label: it sets ``needs_records = True`` and the engine passes
``records=`` to ``predict``. Called without records (robustness, fuzzing), prompts 1 and 2
list every definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...classifier import Coverage, Prediction
from ...errors import ClassifierLoadError
from ...options import DEFAULT_SEED
from .parsing import RobertaConverter, Verdict, parse_response
from .prompts import N_PROMPTS, Definitions, build_prompts, resolve_definitions
from .responses import Answer, ArchivedResponses, ResponseCache, image_key, response_key
from .voting import check_policy, majority, resolve_unsure

if TYPE_CHECKING:
    from PIL.Image import Image

    from ...dataset.records import Record


@dataclass(frozen=True)
class Job:
    """One request: an image, one of its prompts, and the response-cache key."""

    image: Image
    prompt: str
    key: str


@dataclass
class JudgeOptions:
    """Options every judge accepts (from its ``[tool.unsafebench.classifiers.NAME]`` table,
    the run's unsure policy and seed, and ``--unsafebench-import-responses``)."""

    unsure: str = "random"
    seed: int = DEFAULT_SEED
    definitions: str | None = None
    import_responses: str | None = None
    archive_model: str | None = None
    converter: str | None = None
    converter_labels: Sequence[str] | None = None
    converter_base: str | None = None
    cache_dir: Path | None = None
    device: str = "cpu"


class VLMJudge:
    """Subclasses set ``name``, ``model_id``, ``revision``, ``decoding`` and ``default_archive``
    and implement :meth:`generate` (answers for jobs, in order) and :meth:`model_digest`."""

    name = "vlm"
    coverage = Coverage.everything()
    supports_gradients = False
    needs_records = True
    default_archive = ""
    model_id = ""
    revision = ""
    decoding: Mapping[str, Any] = {}
    # Names the rule that turns an answer into a verdict; it enters the fingerprint.
    parser_version = "rules-v2"
    # False for a judge with its own policy prompt (the category definitions are not asked for).
    uses_definitions = True
    # The paper's run of this judge: its model ids, and its folder in the official archive.
    paper_models: tuple[str, ...] = ()
    paper_archive = ""

    def setup(self, opts: JudgeOptions) -> None:
        self.opts = opts
        self.policy = check_policy(opts.unsure)
        self.seed = int(opts.seed)
        self.definitions_info = (resolve_definitions(opts.definitions, opts.cache_dir)
                                 if self.uses_definitions else
                                 Definitions({}, "not used", "the judge's own policy prompt"))
        self.definitions = self.definitions_info.lines
        self.converter = (RobertaConverter(opts.converter, opts.converter_labels, opts.device,
                                           opts.converter_base, opts.cache_dir)
                          if opts.converter else None)
        self.archive = (ArchivedResponses.load(opts.import_responses,
                                               opts.archive_model or self.default_archive)
                        if opts.import_responses else None)
        self._cache: ResponseCache | None = None
        h = hashlib.sha256()
        where = (f"archive:{self.archive.digest}" if self.archive
                 else f"{self.model_id}@{self.revision}:{self.model_digest()}")
        parser = f"converter:{self._converter_digest()}" if self.converter else self.parser_version
        random_seed = self.seed if self.policy == "random" else None
        h.update(json.dumps([where, dict(self.decoding), self.definitions, parser, self.policy,
                             random_seed], sort_keys=True).encode())
        self.fingerprint = f"{self.name}-{h.hexdigest()[:20]}"
        source = (f"archived responses in {self.archive.folder}" if self.archive
                  else f"{self.model_id}" + (f" @ {self.revision}" if self.revision else ""))
        self.description = (f"VLM judge {self.name} ({source}); 3 prompts, majority vote, "
                            f"{'RoBERTa converter' if self.converter else 'rule-based parser'}, "
                            f"unsure -> {self.policy}")
        self.paper_mismatch = self._paper_mismatch()
        self.notes = self.setup_notes()
        if self.paper_mismatch:
            self.notes.append(f"paper figures not shown beside this judge: {self.paper_mismatch}")

    def _paper_mismatch(self) -> str | None:
        """Why this judge's numbers are not the paper's experiment, or None when they are."""
        if not self.paper_models:
            return "the paper did not run this judge"
        if self.converter is None:
            return ("answers labelled by the rule-based parser; the paper used its RoBERTa "
                    'converter (converter = "yiting/converter")')
        if self.archive is not None:
            used = self.opts.archive_model or self.default_archive
            return (None if used == self.paper_archive else
                    f"archive folder {used!r} is not the paper's {self.paper_archive!r}")
        if self.definitions_info.kind != "paper":
            return f"category definitions are {self.definitions_info.origin}, not the paper's"
        return self.model_mismatch()

    def model_mismatch(self) -> str | None:
        """Why a live run of this judge's model differs from the paper's (subclasses)."""
        return None

    def setup_notes(self) -> list[str]:
        """How this judge ran, for its report section: definitions, prompts, decoding, parser;
        the definitions warning first when the paper's were asked for but not found."""
        d = self.definitions_info
        parser = (f"RoBERTa converter ({self.converter.layout}), agreement with the rule "
                  "parser reported" if self.converter
                  else f"rule-based parser ({self.parser_version})")
        source = (f"archived responses ({self.archive.folder}); model settings do not apply"
                  if self.archive else f"model {self.model_id}")
        return [*([d.note] if d.note else []),
                f"definitions: {d.kind} ({d.origin})",
                f"answers: {source}; prompt format: {self.prompt_format_note()}",
                f"decoding: {self.decoding_note()}",
                f"answer -> label: {parser}; images without an answer are excluded from their "
                "cells and counted (excluded_no_verdict)"]

    def prompt_format_note(self) -> str:
        return "the paper's three prompts"

    def decoding_note(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(dict(self.decoding).items())) or "n/a"

    # -- subclass hooks ---------------------------------------------------------------------
    def model_digest(self) -> str:
        raise NotImplementedError

    def generate(self, jobs: Sequence[Job]) -> list[Answer]:
        raise NotImplementedError

    def prompts_for(self, category: str | None) -> list[str]:
        """The prompts an image of ``category`` gets (the paper's three by default)."""
        return build_prompts(category, self.definitions)

    def parse(self, text: str | None) -> Verdict:
        """One answer's verdict by rule (the rule-based parser by default)."""
        return parse_response(text)

    # -- prediction -------------------------------------------------------------------------
    def predict(self, images: Sequence[Image],
                records: Sequence[Record] | None = None) -> list[Prediction]:
        if records is not None and len(records) != len(images):
            raise ValueError(f"{len(records)} records for {len(images)} images")
        recs: list[Record | None] = list(records) if records is not None else [None] * len(images)
        answers = self._answers(images, recs)
        return [self._prediction(a, r, img) for a, r, img in zip(answers, recs, images)]

    def _answers(self, images: Sequence[Image],
                 records: Sequence[Record | None]) -> list[list[Answer]]:
        if self.archive is not None:
            out = []
            for rec in records:
                if rec is None:
                    raise ClassifierLoadError(f"{self.name}: archived responses are matched by "
                                              "record; perturbed images cannot be scored from "
                                              "an archive")
                out.append([self.archive.lookup(i, rec) for i in range(N_PROMPTS)])
            return out
        jobs: list[Job] = []
        counts: list[int] = []
        for img, rec in zip(images, records):
            ihash = image_key(img)
            prompts = self.prompts_for(rec.category if rec else None)
            counts.append(len(prompts))
            for prompt in prompts:
                key = response_key(self.model_id, self.revision, prompt, self.decoding, ihash)
                jobs.append(Job(img, prompt, key))
        cache = self._response_cache()
        known = cache.get(j.key for j in jobs) if cache else {}
        todo = [j for j in jobs if j.key not in known]
        fresh = self.generate(todo) if todo else []
        if len(fresh) != len(todo):
            raise ValueError(f"{self.name}: {len(fresh)} answers for {len(todo)} requests")
        if cache:
            cache.put(self.model_id, [(j.key, a) for j, a in zip(todo, fresh)])
        known.update((j.key, a) for j, a in zip(todo, fresh))
        flat = iter(known[j.key] for j in jobs)
        return [[next(flat) for _ in range(n)] for n in counts]

    def _response_cache(self) -> ResponseCache | None:
        if self._cache is None and self.opts.cache_dir is not None:
            self._cache = ResponseCache(Path(self.opts.cache_dir) / "vlm_responses.sqlite")
        return self._cache

    def _verdicts(self, answers: Sequence[Answer]) -> tuple[list[Verdict], list[Verdict]]:
        rules = [self.parse(a.text) for a in answers]
        if self.converter is None:
            return rules, rules
        return self.converter.convert([a.text or "" for a in answers]), rules

    def _prediction(self, answers: Sequence[Answer], record: Record | None,
                    image: Image) -> Prediction:
        failed = [f"prompt {i}: {a.error}" for i, a in enumerate(answers) if a.error]
        verdicts, rules = self._verdicts(answers)
        vote = majority(verdicts)
        label = record.safety_label if record else None
        ihash = record.content_hash if record else image_key(image)
        # A failed request (or an image with no archived response) is never a verdict: it
        # stays "unsure" with failed = 1, and the effectiveness cells exclude and count it
        # (the official assess_effectiveness.py drops images without a response).
        policy = "none (failed)" if failed else self.policy
        decision = "unsure" if failed else resolve_unsure(vote, policy, true_label=label,
                                                          seed=self.seed, image_hash=ihash)
        probs = [a.p_unsafe for a in answers]
        if all(p is not None for p in probs):
            score = sum(probs) / len(probs)  # type: ignore[arg-type]
        else:  # no token probabilities: the share of prompts that said unsafe
            score = (verdicts.count("unsafe") + 0.5 * verdicts.count("unsure")) / len(verdicts)
        label_scores = {
            "unsure": float(vote == "unsure" or bool(failed)),
            "failed": float(bool(failed)),
            # Prompt 0's own verdict: the robustness pool and RA follow it, as the paper's
            # detailed_predictions[0] (robustness.answer).
            "prompt0": 0.5 if answers[0].error else {"unsafe": 1.0, "safe": 0.0}.get(
                verdicts[0], 0.5),
            **{f"votes_{v}": float(verdicts.count(v)) for v in ("safe", "unsafe", "unsure")},
            **{f"p_unsafe_prompt_{i}": p for i, p in enumerate(probs) if p is not None},
        }
        if self.converter is not None:
            agree = sum(a == b for a, b in zip(verdicts, rules))
            label_scores["parser_agreement"] = agree / len(rules)
        raw = {"responses": [a.text for a in answers], "verdicts": verdicts, "vote": vote,
               "unsure_policy": policy}
        if failed:
            raw["errors"] = failed
        return Prediction(score=min(1.0, max(0.0, float(score))), decision=decision,
                          label_scores=label_scores, raw=json.dumps(raw))

    def _converter_digest(self) -> str:
        from ...weights import file_digest

        assert self.converter is not None
        return "+".join(file_digest(p, self.opts.cache_dir) for p in self.converter.files)
