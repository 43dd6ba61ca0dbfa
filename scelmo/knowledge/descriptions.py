"""Descriptions of genes, cell types, drugs and proteins from the ``describe`` role.

:func:`describe` is the one path every describer goes through:

* a knowledge source (``describe.model = "local"``) answers genes from its table, each
  name looked up under the symbol the gene vocabulary resolves it to (aliases, previous
  symbols and Ensembl IDs, as :func:`scelmo.tl.embed_genes` does; the result keeps the
  name given, with the symbol in :attr:`DescribeResult.symbols`); a name it knows nothing
  of is in :attr:`DescribeResult.unknown` (asking again does not help);
* an LLM provider gets one prompt per item, rendered from a named, versioned
  :class:`~scelmo.plugin.components.PromptTemplate` (the paper's gene prompt by default).
  Answers already in the cache (key: who answers -- the provider's ``cache_key``:
  model, endpoint and answer-changing options --, prompt hash, item) are not asked again;
  the others are sent ``options.concurrency`` at a time, with retries, and each
  answer is committed to the cache **as it arrives**, so an interrupted run
  (Ctrl-C, a crash, SIGKILL) resumes with only the missing items. Empty answers and
  refusals are asked once more, then reported in :attr:`DescribeResult.failed`
  (never cached). ``max_cost`` stops a run before it would spend more;
  :func:`estimate` (``--dry-run``) prints the calls, tokens and cost first.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scelmo import plugin as plugins
from scelmo.config import ScelmoSettings, get_settings
from scelmo.errors import BudgetExceededError, ConfigError, InputError, ScelmoWarning
from scelmo.knowledge import roles
from scelmo.llm.cache import Cache, open_cache, text_hash
from scelmo.llm.calls import (
    Budget,
    Estimate,
    Usage,
    no_price,
    priced_by_options,
    run_calls,
    with_retries,
)
from scelmo.plugin import Completion, KnowledgeSource, PromptTemplate, Provider
from scelmo.progress import progress_bar

#: Subjects and the name of their default prompt.
SUBJECTS = {"gene": "gene", "cell_type": "cell-type", "drug": "drug", "protein": "protein"}
_SUBJECT_ALIASES = {
    "genes": "gene", "cell-type": "cell_type", "cell-types": "cell_type", "cell_types": "cell_type",
    "celltype": "cell_type", "drugs": "drug", "proteins": "protein",
}
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry[,.]|i cannot|i can'?t|i can not|i'?m unable|i am unable|"
    r"as an ai|i do not have (enough )?information|i don'?t have (enough )?information|"
    r"unfortunately,? i|i apologi[sz]e|(my )?apologies[,.:!]|i'?m afraid i|i am afraid i|"
    r"i'?m not able to|i am not able to|i regret)",
    re.IGNORECASE,
)
#: Answers shorter than this many characters are treated as empty.
MIN_CHARS = 10
#: Extra attempts for an empty or refusing answer (each is a paid call).
ANSWER_RETRIES = 1


@dataclass
class DescribeResult:
    """Texts by item, plus what producing them took."""

    texts: dict[str, str]
    model: str
    prompt: PromptTemplate | None
    subject: str
    #: items the describer knows nothing of, or whose answers were empty / refusals
    failed: dict[str, str] = field(default_factory=dict)
    cached: int = 0
    usage: Usage = field(default_factory=Usage)
    #: the items of ``failed`` a knowledge table knows nothing of (not a provider failure: asking
    #: again gives the same answer)
    unknown: list[str] = field(default_factory=list)
    #: a knowledge table's answers: the gene symbol each described item was resolved to
    symbols: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """Strings and numbers only (goes into ``uns`` / manifests)."""
        out: dict[str, Any] = {
            "describe_model": self.model,
            "subject": self.subject,
            "n_described": len(self.texts),
            "n_failed": len(self.failed),
            "n_cached": self.cached,
            **{f"usage_{k}": v for k, v in self.usage.as_dict().items()},
        }
        if self.prompt is not None:
            out.update(prompt=self.prompt.name, prompt_version=self.prompt.version, prompt_hash=self.prompt.hash)
        return out


def normalize_subject(subject: str) -> str:
    """``"cell-types"`` -> ``"cell_type"`` etc.; unknown subjects are errors."""
    key = subject.strip().lower()
    key = _SUBJECT_ALIASES.get(key, key)
    if key not in SUBJECTS:
        raise ConfigError(
            f"Unknown subject {subject!r}: choose one of genes, cell-types, drugs, proteins."
        )
    return key


def get_prompt(prompt: str | PromptTemplate | None = None, *, subject: str = "gene") -> PromptTemplate:
    """A registered prompt by name (default: the subject's default prompt), or ``prompt`` itself."""
    if isinstance(prompt, PromptTemplate):
        return prompt
    subject = normalize_subject(subject)
    return plugins.prompts.get(prompt or SUBJECTS[subject])


def _unique(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _check_items(items: Sequence[str]) -> list[str]:
    if isinstance(items, str):
        raise InputError("Pass a list of names, not one string (e.g. describe(['CD3E'])).")
    unique = _unique(items)
    if not unique:
        raise InputError("Nothing to describe: the list of names is empty.")
    return unique


def answer_problem(text: str | None) -> str | None:
    """Why an answer is unusable (``None`` when it is fine)."""
    if text is None or len(text.strip()) < MIN_CHARS:
        return "empty answer"
    if _REFUSAL.match(text):
        return "refusal: " + text.strip()[:60]
    return None


@dataclass
class _Plan:
    settings: ScelmoSettings
    component: KnowledgeSource | Provider
    template: PromptTemplate | None  # None for a knowledge source
    unique: list[str]
    subject: str

    def cached(self, cache: Any) -> dict[str, str]:
        """Answers already in ``cache`` (an open :class:`~scelmo.llm.cache.Cache` or ``None``), by item."""

        if cache is None or self.template is None:
            return {}
        hashes = {text_hash(i): i for i in self.unique}
        c = self.component
        done = cache.get_texts(c.cache_key, self.template.hash, list(hashes), legacy=c.legacy_cache_keys)
        return {hashes[h]: text for h, text in done.items()}


def _plan(
    items: Sequence[str],
    subject: str,
    prompt: str | PromptTemplate | None,
    settings: ScelmoSettings | Mapping[str, Any] | None,
    using: KnowledgeSource | Provider | None,
) -> _Plan:
    settings = get_settings(settings)
    subject = normalize_subject(subject)
    unique = _check_items(items)
    component = using if using is not None else roles.description_writer(settings)
    template = None
    if isinstance(component, Provider):
        template = get_prompt(prompt, subject=subject)
        if template.subject != subject:
            warnings.warn(
                f"Prompt {template.name!r} is written for {template.subject}s, not {subject}s.",
                ScelmoWarning,
                stacklevel=3,
            )
    elif subject != "gene":
        offline = (" Offline, names-only annotation (`scelmo.tl.annotate(adata, cell_types=[...])`) marks each "
                   "name by curated marker sets and Cell Ontology definitions, and lists the genes in "
                   "adata.uns['scelmo']['annotate']['markers_<name>']." if subject == "cell_type" else "")
        raise ConfigError(
            f"describe.model = {component.model_id!r} is a gene-knowledge table and cannot describe "
            f"{subject.replace('_', ' ')}s. Set `describe.model` to an LLM (e.g. "
            "\"openai/gpt-4o-mini\" or \"ollama/llama3.1\"; see docs/providers/)." + offline
        )
    return _Plan(settings, component, template, unique, subject)


def _by_symbol(plan: _Plan) -> tuple[_Plan, dict[str, str]]:
    """For genes an LLM describes: the plan asking about each name's resolved symbol (IGJ ->
    JCHAIN), as ``embed_genes`` asks, and ``{name: symbol}`` for the names that differ.
    Without this, ``scelmo describe genes`` then ``embed-genes`` paid twice for every alias
    (an LLM-path trial: 8 of 60 pbmc68k genes). Names the vocabulary does not know are
    asked about as given."""
    if plan.subject != "gene" or not isinstance(plan.component, Provider):
        return plan, {}
    vocab = roles.vocabulary(plan.component)
    if vocab is None:
        return plan, {}
    res = vocab.resolve(plan.unique, species=plan.settings.genes.species)
    alias = {n: sym for n, sym in zip(plan.unique, res.symbols, strict=True) if sym and sym != n}
    if not alias:
        return plan, {}
    return replace(plan, unique=list(dict.fromkeys(alias.get(n, n) for n in plan.unique))), alias


def _by_name(names: Sequence[str], alias: Mapping[str, str], by_item: Mapping[str, Any]) -> dict[str, Any]:
    """``by_item`` (keyed by what was asked: symbols) keyed by the names given, in their order."""
    return {n: by_item[alias.get(n, n)] for n in names if alias.get(n, n) in by_item}


def estimate(
    items: Sequence[str],
    *,
    subject: str = "gene",
    prompt: str | PromptTemplate | None = None,
    config: ScelmoSettings | Mapping[str, Any] | None = None,
    using: KnowledgeSource | Provider | None = None,
) -> Estimate:
    """Calls, tokens and cost :func:`describe` would spend now (nothing is sent)."""

    plan, _ = _by_symbol(_plan(items, subject, prompt, config, using))
    component, template, unique = plan.component, plan.template, plan.unique
    if not isinstance(component, Provider):
        return Estimate("describe", component.model_id, 0, len(unique), len(unique), 0, 0, 0.0,
                        ["offline knowledge table: no calls"])
    with open_cache(plan.settings) as cache:
        done = plan.cached(cache)
    todo = [i for i in unique if i not in done]
    ptok = sum(component.count_tokens(template.render(i), system=template.system) for i in todo)
    ctok = component.expected_completion_tokens() * len(todo)
    cost = component.price(ptok, ctok) if todo else 0.0
    # where the assumption comes from: the provider's own method, its `max_tokens` option, or the default
    if type(component).expected_completion_tokens is not Provider.expected_completion_tokens:
        source = f"from {component.name}'s expected_completion_tokens()"
    elif "max_tokens" in type(component.options).model_fields:
        source = "max_tokens"
    else:
        source = (f"a default: {component.name!r} has no max_tokens option; its author can implement "
                  "Provider.expected_completion_tokens()")
    notes = [f"completion tokens assumed {component.expected_completion_tokens()} per answer ({source})"]
    if cost is None:
        notes.append("price unknown to litellm: set options.input_cost_per_token / output_cost_per_token"
                     if priced_by_options(component)
                     else f"{no_price(component)}; until then --max-cost refuses to run")
    return Estimate("describe", component.model_id, len(todo), len(unique), len(unique) - len(todo),
                    ptok, ctok, cost, notes)


def cached_descriptions(
    items: Sequence[str],
    *,
    subject: str = "gene",
    prompt: str | PromptTemplate | None = None,
    config: ScelmoSettings | Mapping[str, Any] | None = None,
    using: KnowledgeSource | Provider | None = None,
) -> dict[str, str]:
    """The answers :func:`describe` would take from the cache now, by item (no calls; a
    knowledge table's texts, which cost nothing, are not "cached" and not returned)."""
    plan = _plan(items, subject, prompt, config, using)
    if not isinstance(plan.component, Provider):
        return {}
    names = plan.unique
    plan, alias = _by_symbol(plan)
    with open_cache(plan.settings) as cache:
        done = plan.cached(cache)
    return _by_name(names, alias, done)


def describe(
    items: Sequence[str],
    *,
    subject: str = "gene",
    prompt: str | PromptTemplate | None = None,
    config: ScelmoSettings | Mapping[str, Any] | None = None,
    using: KnowledgeSource | Provider | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    progress: bool | None = None,
) -> DescribeResult:
    """Describe ``items`` (gene symbols, cell-type names, drugs, proteins).

    Parameters
    ----------
    items
        Names to describe; duplicates and blanks are dropped.
    subject
        ``"gene"``, ``"cell_type"``, ``"drug"`` or ``"protein"`` (plural and dashed
        forms accepted). Chooses the default prompt.
    prompt
        A registered prompt name (``scelmo plugins`` lists them) or a
        :class:`~scelmo.plugin.components.PromptTemplate`.
    config
        Settings or overrides; the ``describe`` role says who answers.
    using
        A describer component to use instead of the configured one.
    max_cost
        Stop (raising :class:`~scelmo.errors.BudgetExceededError`) before spending more
        than this many USD; everything answered so far is cached.
    budget
        A :class:`~scelmo.llm.calls.Budget` shared with other steps (instead of ``max_cost``).
    progress
        Show a progress bar with calls, tokens and cost so far.

    Returns
    -------
    :class:`DescribeResult`: ``texts`` by item (items that failed are in ``failed``
    with the reason, and are not cached).
    """

    plan = _plan(items, subject, prompt, config, using)
    if isinstance(plan.component, KnowledgeSource):
        return _from_knowledge_source(plan)
    names = plan.unique
    plan, alias = _by_symbol(plan)
    result = DescribeResult({}, plan.component.model_id, plan.template, plan.subject, usage=Usage())
    with open_cache(plan.settings) as cache:
        result.texts.update(plan.cached(cache))
        result.cached = len(result.texts)
        todo = [i for i in plan.unique if i not in result.texts]
        _ask(plan, todo, result, cache, budget if budget is not None else Budget(max_cost), progress)
    # keyed by the names given, in their order (an alias's text is its symbol's)
    result.texts = _by_name(names, alias, result.texts)
    result.failed = _by_name(names, alias, result.failed)
    result.symbols = {n: sym for n, sym in alias.items() if n in result.texts}
    if result.failed:
        sample = ", ".join(f"{k} ({v})" for k, v in list(result.failed.items())[:3])
        warnings.warn(
            f"{len(result.failed)} of {len(names)} descriptions failed and were left out: {sample}. "
            "They were not cached; run again to retry them, or try another prompt or model.",
            ScelmoWarning,
            stacklevel=2,
        )
    return result


def _from_knowledge_source(plan: _Plan) -> DescribeResult:
    """Texts straight from an offline knowledge table (no calls, nothing to cache).

    Each name is looked up under the symbol the gene vocabulary resolves it to (IGJ ->
    JCHAIN, an Ensembl ID -> its symbol), else as given; the texts stay keyed by the
    names given.
    """
    names = plan.unique
    vocab = roles.vocabulary(plan.component)
    if vocab is not None:
        res = vocab.resolve(names, species=plan.settings.genes.species)
        resolved = dict(zip(names, res.symbols, strict=True))
    else:
        resolved = dict.fromkeys(names)
    texts = plan.component.gene_texts(sorted({s for s in resolved.values() if s} | set(names)))
    found: dict[str, str] = {}
    symbols: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in names:
        sym = resolved[name]
        for key in (sym, name):
            if key and texts.get(key):
                found[name], symbols[name] = texts[key], key
                break
        else:
            failed[name] = (f"resolved to {sym}, which the knowledge table has no entry for" if sym and sym != name
                            else "not in the knowledge table (not a gene symbol, alias or Ensembl ID it knows)"
                            if not sym else "not in the knowledge table")
    return DescribeResult(found, plan.component.model_id, None, plan.subject, failed, cached=0,
                          unknown=list(failed), symbols=symbols)


async def _answer(component: Provider, template: PromptTemplate, item: str, policy: Any,
                  usage: Usage, budget: Budget | None = None,
                  estimate: Any = None) -> tuple[Completion, str | None, float | None]:
    """One item's completion, asked again (up to ``ANSWER_RETRIES`` times) while it is a refusal or empty.

    Returns the last answer, what is wrong with it (``None`` when it is usable) and the
    first call's cost (the call :func:`~scelmo.llm.calls.run_calls` booked). Each re-ask
    is another paid call: under a cost limit it is booked in ``budget`` first (at
    ``estimate()``) and settled here, or not made when it does not fit (an LLM-path trial:
    empty answers took a ``max_cost=0.35`` run to $0.60).
    """
    text = template.render(item)
    limited = budget is not None and budget.max_cost is not None

    async def ask() -> Completion:
        answer = await with_retries(lambda: component.acomplete(text, system=template.system), policy,
                                    usage=usage, label=component.model_id)
        usage.add(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens, cost=answer.cost)
        return answer

    answer = await ask()
    first_cost, problem = answer.cost, answer_problem(answer.text)
    for _ in range(ANSWER_RETRIES):
        if problem is None:
            break
        booked: float | None = None
        if limited:
            # the first call is still booked at its worst case until this item returns: only
            # its actual cost counts here; other calls in flight are waited for, as run_calls does
            first_booked = estimate() if estimate is not None else 0.0
            credit = (first_booked or 0.0) - (first_cost or 0.0) if first_cost is not None else 0.0
            try:
                booked = await budget.reserve_holding(first_booked, component, credit=credit)  # type: ignore[union-attr]
            except BudgetExceededError:
                return answer, f"{problem}; not asked again, as that would pass the cost limit", first_cost
        try:
            answer = await ask()
        except BaseException:
            if booked is not None:
                budget.settle(booked, 0.0)  # type: ignore[union-attr]
            raise
        if booked is not None:
            budget.settle(booked, answer.cost)  # type: ignore[union-attr]
        problem = answer_problem(answer.text)
    return answer, problem, first_cost


def _ask(plan: _Plan, todo: list[str], result: DescribeResult, cache: Cache | None, budget: Budget,
         progress: bool | None) -> None:
    """Ask the provider about ``todo``, concurrently, into ``result``.

    Each usable answer is committed to the cache as it arrives, so a crash or a budget
    stop never pays for it again; failed items go to ``result.failed`` and are not cached.
    """
    component, template, usage = plan.component, plan.template, result.usage
    assert template is not None
    policy = component.retry_policy()
    expected = component.expected_completion_tokens()
    with progress_bar(total=len(todo), desc=f"describing {plan.subject.replace('_', ' ')}s", unit="call",
                      enabled=progress) as bar:

        def on_result(item: str, out: tuple[Completion, str | None, float | None]) -> None:
            answer, problem, _ = out
            if problem is None:
                text = answer.text.strip()
                if cache is not None:
                    cache.put_texts(component.cache_key, template.hash, {text_hash(item): text})
                result.texts[item] = text
            else:
                result.failed[item] = problem
            bar.update(1)
            bar.set_postfix(usage.postfix(), refresh=False)

        def estimate(item: str) -> float | None:
            return component.price(component.count_tokens(template.render(item), system=template.system), expected)

        run_calls(
            todo,
            lambda item: _answer(component, template, item, policy, usage, budget, lambda: estimate(item)),
            on_result=on_result,
            concurrency=int(getattr(component.options, "concurrency", 8)),
            budget=budget,
            estimate_cost=estimate,
            actual_cost=lambda out: out[2],  # (each re-ask settled its own booking)
            component=component,
        )
