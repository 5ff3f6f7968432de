"""pytest-mgpu: performance-regression testing of LLM inference engines on multi-GPU layouts."""

__version__ = "0.1.0"

#: Version of the metric definitions (vLLM ``vllm bench serve`` semantics). Bump on any change
#: to how a metric is computed, so that results across plugin versions are never mixed silently.
METRIC_DEFINITION_VERSION = 1
