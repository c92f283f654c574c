import sys

from disentangled_ml.cli import main

sys.exit(main())
