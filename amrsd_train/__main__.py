"""``python -m amrsd_train``: the ``amrsd-train`` command line, also what ``torchrun -m amrsd_train`` starts.

(``python -m amrsd_train.run`` works too, but Python warns there, because the package imports ``run`` first.)
"""

import sys

from amrsd_train.run import main

sys.exit(main())
