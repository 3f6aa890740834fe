"""The ecologists' console: server-rendered pages on the cloud service, mounted under
``/console`` (``bentos/service.py``), reading and writing only through the cloud store's
interface.

* Overview — tours per day and week, species heard / confirmed / rejected per taxon class, devices
  (last sync, model, pending items, speech-suppressed windows), the edge/cloud disagreement rate
  per day (an SVG plot).
* Review queue — clips by value (disagreement, guide flags, uncertain, random) with a spectrogram
  (the shared log-mel, rendered here as PNG), an audio player, the edge's and the cloud's top-3 and
  the guide's verdict; accept / relabel / not an animal / skip, all from the keyboard. Verdicts are
  stored with the reviewer and time (``Store.add_review_verdict``) and read by ``silencio loop run``.
* Tours, species (pins, confusions), models and releases (promote / roll back: admins, with a
  confirmation step; loop reports), exports (Darwin Core, CSV, Raven).

Security: :mod:`cloud.console.auth`. Build: ``Console(ConsoleDeps(store, home, taxonomy)).app`` or
:func:`make_app`; users: ``silencio cloud add-user NAME --role reviewer|admin``.
"""

from cloud.console.app import Console, ConsoleDeps, make_app
from cloud.console.settings import ConsoleSettings

__all__ = ["Console", "ConsoleDeps", "ConsoleSettings", "make_app"]
