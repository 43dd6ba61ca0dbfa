"""scelmo_litellm: any LLM / embedding provider through litellm.

litellm is imported only when a component is used, never when the plugin registers.
"""

from __future__ import annotations
