"""Start an RQ worker for nurture's send queue (same as ``nurture worker``).

    python worker.py [--burst] [--simple]
"""

from nurture.cli import main

if __name__ == "__main__":
    main(["worker", *__import__("sys").argv[1:]])
