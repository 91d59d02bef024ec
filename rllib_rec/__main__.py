import sys

from rllib_rec.cli import main

sys.exit(main())
