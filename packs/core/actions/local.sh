#!/bin/sh
# Parameters arrive on stdin as shell-quoted NAME='value' lines (parameter_format: dotenv), read with the
# shell's own `read` (no `cat` process to start), then the command runs in a new shell of its own.
doc=
while IFS= read -r line || [ -n "$line" ]; do doc="$doc$line
"; done
eval "$doc"
unset doc line
exec /bin/sh -c "$cmd"
