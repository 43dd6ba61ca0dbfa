"""scelmo_torch: trainable task heads on top of gene embeddings (torch).

torch is imported only inside the components, never when the plugin registers.
"""

from __future__ import annotations
