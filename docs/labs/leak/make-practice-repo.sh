#!/usr/bin/env bash
# Builds the practice repository of lab 7 ("the leak") in DIR: a small service whose history
# holds a `.env` and a `config.yaml` with credentials, committed and later deleted. The
# credentials are made up here, at random, each time: nothing secret is in this repository.
# Usage: docs/labs/leak/make-practice-repo.sh DIR
set -euo pipefail
dir=${1:?usage: make-practice-repo.sh DIR}
[ -e "$dir" ] && { echo "$dir exists: give a new folder" >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
rand() { head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c "$1"; }
alnum() { head -c 256 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c "$1"; }
git init -q -b main
git config user.name "Course Student"
git config user.email "student@example.invalid"
commit() { GIT_AUTHOR_DATE="$1" GIT_COMMITTER_DATE="$1" git commit -q -m "$2"; }

cat > README.md <<'TXT'
# leaky-service
Course project: a small order service. Run `make run`.
TXT
printf 'run:\n\t./serve --config config.yaml\n' > Makefile
git add README.md Makefile
commit "2024-03-04T09:12:00Z" "Start the course project"

# The mistake: real-looking credentials, in files next to the code.
printf 'DATABASE_URL=postgres://app@db.internal:5432/orders\nDATABASE_PASSWORD=%s\n' "$(alnum 24)" > .env
printf 'service:\n  port: 8080\npayments:\n  api_token: sk_live_%s\n  webhook_secret: whsec_%s\n' \
  "$(alnum 24)" "$(rand 32)" > config.yaml
git add .env config.yaml
GIT_AUTHOR_NAME="Teaching Assistant" commit "2024-03-05T17:40:00Z" "Add configuration for the demo"

echo 'Add the payment client.' > CHANGELOG
git add CHANGELOG
commit "2024-03-06T10:02:00Z" "Payment client"

# The "fix": the files are deleted and ignored. They stay in every earlier commit.
git rm -q .env config.yaml
printf '.env\nconfig.yaml\n' > .gitignore
git add .gitignore
commit "2024-03-07T08:30:00Z" "Remove secrets"

echo 'Orders can be listed.' >> CHANGELOG
git add CHANGELOG
commit "2024-03-08T14:15:00Z" "List orders"
echo "practice repository ready in $dir ($(git rev-list --count HEAD) commits)"
