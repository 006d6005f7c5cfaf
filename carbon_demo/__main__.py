"""`python -m carbon_demo`: the `carbon-demo` command."""

from carbon_demo.cli import main

if __name__ == "__main__":
    main()
