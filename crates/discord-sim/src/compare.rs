//! Comparing a consumer's view of a guild with the sim's ground truth.

use serde_json::Value;

/// The id an array item of a `GUILD_CREATE` is known by: `id`, a member's
/// or presence's `user.id`, a voice state's `user_id`, a sound's
/// `sound_id`; the item itself as text where it has none.
#[must_use]
pub fn item_id(item: &Value) -> String {
    let id = item
        .get("id")
        .or_else(|| item.get("user").and_then(|u| u.get("id")))
        .or_else(|| item.get("user_id"))
        .or_else(|| item.get("sound_id"));
    id.map_or_else(|| item.to_string(), ToString::to_string)
}

/// `v` with every array of objects sorted by [`item_id`], at any depth:
/// Discord gives the order of a guild's lists no meaning and clients key
/// them by id, so two `GUILD_CREATE`s are the same guild when their
/// normalized forms are equal.
#[must_use]
pub fn normalized(mut v: Value) -> Value {
    match &mut v {
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = normalized(item.take());
            }
            if items.iter().all(Value::is_object) {
                items.sort_by_key(item_id);
            }
        }
        Value::Object(map) => {
            for value in map.values_mut() {
                *value = normalized(value.take());
            }
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_compare_as_sets_keyed_by_id() {
        let a = json!({"roles": [{"id": "2"}, {"id": "1"}], "members": [{"user": {"id": "9"}}, {"user": {"id": "8"}}]});
        let b = json!({"roles": [{"id": "1"}, {"id": "2"}], "members": [{"user": {"id": "8"}}, {"user": {"id": "9"}}]});
        assert_ne!(a, b);
        assert_eq!(normalized(a), normalized(b));
        let c = json!({"roles": [{"id": "1"}, {"id": "3"}]});
        assert_ne!(
            normalized(c),
            normalized(json!({"roles": [{"id": "1"}, {"id": "2"}]}))
        );
        // Arrays of plain values keep their order.
        assert_ne!(normalized(json!(["b", "a"])), normalized(json!(["a", "b"])));
    }
}
