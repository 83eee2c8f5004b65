"""``mesh doctor``: explain why peers do not see each other.

Split like the rest of mesh (STYLE.md, "pure core, thin shell"):

- ``model``: what was observed (``LocalView``, ``Sighting``, ``Target``, ``Probe``) and
  what is concluded (``Finding``), as frozen data; the pure checks of mDNS records and
  the merge of addresses into probe targets
- ``findings``: ``diagnose(observations, *, window_s, versions) -> [Finding]``, plain
  rules over that data (no sockets, no clock), one per cause
- ``probe``: the shell that observes: the data dir's files, the local peer's member
  view, an mDNS browse, a TCP connect and a signed ``ping`` to each known address, all
  bounded in time
- ``report``: the findings as a readable list, or JSON
"""

from mesh.doctor.findings import diagnose
from mesh.doctor.model import Finding, Observations, Severity

__all__ = ["Finding", "Observations", "Severity", "diagnose"]
