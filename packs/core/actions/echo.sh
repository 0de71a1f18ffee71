#!/bin/sh
# Parameters arrive on stdin as shell-quoted NAME='value' lines (parameter_format: dotenv).
eval "$(cat)"
printf '%s\n' "$message"
