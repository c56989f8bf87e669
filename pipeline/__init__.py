"""Score preference pairs with a reference model (vLLM) into reusable Parquet shards.

    from pipeline import score, finalize, inspect

`import pipeline` does not import vLLM; the engine starts when a shard needs it.
"""

from pipeline.api import ScoreResult, finalize, inspect, score

__all__ = ["ScoreResult", "finalize", "inspect", "score"]
