"""``python -m nurture``: the same as the ``nurture`` command.

Running ``nurture.cli`` itself as ``__main__`` would import it twice (once as
``__main__``, once as ``nurture.cli`` by the command modules it registers).
"""

from .cli import main

main()
