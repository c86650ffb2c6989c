from gossipfl.cli import main

raise SystemExit(main())
