#!/bin/sh
# Parameters arrive on stdin as shell-quoted NAME='value' lines (parameter_format: dotenv), read with the
# shell's own `read` (no `cat` process to start: half the cost of this action).
doc=
while IFS= read -r line || [ -n "$line" ]; do doc="$doc$line
"; done
eval "$doc"
printf '%s\n' "$message"
