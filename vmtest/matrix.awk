# Reads one package's `test.v` log and prints its matrix cell, then the
# failures and skips with their first log lines (markdown).
# Variables: rc (exit status of the test binary), secs, what ("K pkg").
#
# Under -test.v, t.Log/t.Error lines are streamed as they happen, after an
# "=== RUN/CONT/NAME <test>" line naming their test; that is how a message
# is tied to its test even when tests run in parallel.
/^=== (RUN|CONT|NAME|PAUSE) / { cur = $3; next }
/^    [^ ].*\.go:[0-9]+: / {
	top = cur; sub(/\/.*/, "", top)
	line = $0; sub(/^ +/, "", line)
	if (nmsg[top] < 4) msg[top, ++nmsg[top]] = line
	if (!(cur in first)) first[cur] = line
	next
}
/^--- (PASS|FAIL|SKIP): / {
	name = $3
	res[name] = $2; order[++n] = name
	if ($2 == "PASS:") pass++
	if ($2 == "FAIL:") fail++
	if ($2 == "SKIP:") skip++
	next
}
/^panic: |test timed out after|^fatal error: |^no test binary|^build failed/ { if (!crash) crash = $0 }
END {
	total = pass + fail + skip
	if (rc == 127) cell = "not run"
	else if (fail > 0 || rc != 0) cell = "**FAIL** " fail "/" total
	else if (total == 0) cell = "no tests"
	else if (pass == 0) cell = "skip " skip
	else cell = "pass " pass "/" total (skip ? " (" skip " skip)" : "")
	if (rc != 0 && crash != "") cell = cell " (" substr(crash, 1, 40) ")"
	else if (rc != 0 && fail == 0) cell = cell " (rc " rc ")"
	printf "CELL\t%s, %ss\n", cell, secs
	if (rc != 0 && crash != "") printf "DETAIL\t- %s: exit %s: `%s`\n", what, rc, crash
	for (i = 1; i <= n; i++) {
		t = order[i]
		if (res[t] == "FAIL:") {
			printf "DETAIL\t- %s **%s** failed:\n", what, t
			for (j = 1; j <= nmsg[t]; j++) printf "DETAIL\t      %s\n", msg[t, j]
		} else if (res[t] == "SKIP:") {
			printf "DETAIL\t- %s %s skipped: %s\n", what, t, (t in first) ? first[t] : "(no reason given)"
		}
	}
}
