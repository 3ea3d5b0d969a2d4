import sys

from vidtune.console.app import main

sys.exit(main())
