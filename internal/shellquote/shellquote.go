// Package shellquote quotes words for a POSIX shell: the remote command of ssh, build steps
// run in a guest, runit run scripts, and commands shown to users to copy.
package shellquote

import "strings"

// Quote returns s as one shell word: unchanged when it is made only of characters no shell
// treats specially, otherwise in single quotes.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Join quotes each word and joins them with spaces, so a shell sees exactly these words.
func Join(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = Quote(w)
	}
	return strings.Join(q, " ")
}
