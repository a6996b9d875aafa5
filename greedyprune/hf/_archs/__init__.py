"""Everything greedyprune.hf knows about particular model architectures, in one table.

The hooks (:mod:`greedyprune.hf._handle`) are generic; what differs between architectures is
where things are and how a run of placeholder tokens maps to images and patches. That lives in
one :class:`ArchSpec` per architecture, registered in :data:`ARCHS` (the vocabulary is in
:mod:`.base`; what each family does is in docs/architectures.md).

Adding a family: one module here that defines its ``units`` function(s) and calls
``register(ArchSpec(...))`` once per model class pair, an import line below (the import order
is the table's order), a tiny-model builder and tests (``tests/hf_models.py``), and a section in
docs/architectures.md.
"""
from importlib import import_module

from .base import (ARCHS, ArchSpec, Media, UnitLayout, UnitsContext, UnitsFn, VisionRecord,
                   find, register, supported_classes)

# Each family's module registers its entries when imported, in this order.
for _family in ("llava", "llava_next", "gemma3", "onevision", "idefics3", "qwen"):
    import_module(f"{__name__}.{_family}")
del _family

__all__ = ["ARCHS", "ArchSpec", "Media", "UnitLayout", "UnitsContext", "UnitsFn",
           "VisionRecord", "find", "register", "supported_classes"]
