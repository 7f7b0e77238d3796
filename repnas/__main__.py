import sys

try:
    from repnas.cli import main
except KeyboardInterrupt:  # Ctrl-C while the imports run: no traceback, the interrupted exit code
    print("repnas: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
