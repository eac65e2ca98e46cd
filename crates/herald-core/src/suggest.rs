//! "Did you mean …?" for names a user typed: an event type or a channel that is not known is
//! most often a known one misspelt (`user.creatd`), written with other separators
//! (`user_created`) or in other case (`User.Created`).

/// The candidate closest to `typed`, if one is close enough to be what was meant: equal once
/// case and separators are ignored, or within a few edits (one for a short name, up to three
/// for a long one). Of equally close candidates the one closest as typed (case and separators
/// counted) is chosen, `user.created` for `user.creatd` rather than `USER_CREATED`, then the
/// alphabetically first, so that the answer does not depend on the order they come in.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let normal = normalized(typed);
    let allowed = (normal.chars().count() / 4).clamp(1, 3);
    candidates
        .into_iter()
        .filter_map(|c| {
            let distance = strsim::damerau_levenshtein(&normal, &normalized(c));
            (distance <= allowed)
                .then(|| (distance, strsim::damerau_levenshtein(typed.trim(), c), c))
        })
        .min()
        .map(|(_, _, c)| c)
}

/// `" (did you mean 'x'?)"`, to follow the complaint about a name; nothing without a suggestion.
pub fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

/// Lower case, with `_`, `-`, `/`, `:` and spaces read as the `.` event types are written with.
fn normalized(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '_' | '-' | '/' | ':' | ' ' => '.',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: &[&str] = &[
        "user.created",
        "user.updated",
        "user.deleted",
        "session.revoked",
        "group.member.added",
    ];

    fn suggest(typed: &str) -> Option<&'static str> {
        closest(typed, TYPES.iter().copied())
    }

    #[test]
    fn a_misspelt_name_finds_the_one_meant() {
        assert_eq!(suggest("user.creatd"), Some("user.created"));
        assert_eq!(suggest("user.craeted"), Some("user.created"));
        assert_eq!(suggest("sesion.revoked"), Some("session.revoked"));
        assert_eq!(suggest("group.member.add"), Some("group.member.added"));
    }

    #[test]
    fn case_and_separators_do_not_count() {
        assert_eq!(suggest("user_created"), Some("user.created"));
        assert_eq!(suggest("User.Created"), Some("user.created"));
        assert_eq!(suggest("group-member-added"), Some("group.member.added"));
    }

    #[test]
    fn nothing_is_suggested_when_nothing_is_close() {
        assert_eq!(suggest("invoice.paid"), None);
        assert_eq!(suggest("user"), None);
        assert_eq!(suggest(""), None);
        assert_eq!(closest("user.created", std::iter::empty()), None);
    }

    #[test]
    fn of_names_equally_close_the_one_closest_as_typed_is_meant() {
        // Two catalogs of one organization: Optare's and Parallel Works' names for one event.
        let both = [
            "USER_CREATED",
            "user.created",
            "USER_DELETED",
            "user.deleted",
        ];
        for (typed, meant) in [
            ("user.creatd", "user.created"),
            ("user.createdd", "user.created"),
            ("user_created", "user.created"),
            ("USER_CREATD", "USER_CREATED"),
            ("user-deleted", "user.deleted"),
        ] {
            assert_eq!(closest(typed, both), Some(meant), "{typed}");
            let reversed: Vec<&str> = both.iter().rev().copied().collect();
            assert_eq!(closest(typed, reversed), Some(meant), "{typed}");
        }
    }

    #[test]
    fn ties_go_to_the_alphabetically_first() {
        assert_eq!(closest("ab", ["ac", "aa"]), Some("aa"));
        assert_eq!(closest("ab", ["aa", "ac"]), Some("aa"));
    }
}
