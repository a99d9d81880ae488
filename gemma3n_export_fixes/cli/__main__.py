import sys

from gemma3n_export_fixes.cli.main import main

sys.exit(main())
