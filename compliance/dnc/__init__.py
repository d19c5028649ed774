"""Do-not-call lists: in-memory lookup, bulk import and on-disk persistence (domain.md §4.2).

Several named lists (federal registry, state lists, internal opt-outs, litigators), each with its
source and the date its data was pulled. A campaign names the lists it must be scrubbed against;
a list older than 31 days makes the gate fail closed for those campaigns, because the FTC safe
harbour (16 CFR 310.4(b)(3)(iv)) covers only calls scrubbed against "a version of the National
Registry obtained ... no more than 31 days prior".

The package, one concept per module:

- ``lookup``: the lookup keys (``dnc_key``) and one list (``DncList``): a sorted array of
  doubles with a directory, membership, staleness;
- ``importer``: ``DncImporter``, the sans-IO parser of number files, and ``ImportReport``;
- ``fileformat``: a list on disk (``NAME.f64`` + ``NAME.json``);
- ``memory``: ``release_memory`` and ``trim_heap``, handing a big import's heap back to the OS;
- ``store``: ``DncStore``, every loaded list by name, which the gate reads.

This module is the public API; the rest of the code imports from ``compliance.dnc``.
"""

from compliance.dnc.importer import MAX_LINE, DncImporter, ImportReport, Progress
from compliance.dnc.lookup import DEFAULT_MAX_AGE_DAYS, DncList, dnc_key
from compliance.dnc.memory import release_memory, trim_heap
from compliance.dnc.store import DncStore, build_import

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "MAX_LINE",
    "DncImporter",
    "DncList",
    "DncStore",
    "ImportReport",
    "Progress",
    "build_import",
    "dnc_key",
    "release_memory",
    "trim_heap",
]
