"""The PromQL selector lexer the contrib dashboard and alert rules are checked with."""

from support.promql import Matcher, Selector, selectors


def test_names_and_matchers_of_nested_queries():
    expr = ('(sum by (instance, le) (rate(mesh_x_bucket{job=~"a|b", state="w\\"q"}[5m:1m] offset 1h)) '
            '/ on (instance) group_left (name) max by (instance, name) (mesh_peer_info)) > bool 0.5 '
            "or vector(0) unless {__name__='mesh_y', outcome!=`ok`} and up")
    assert selectors(expr) == [
        Selector("mesh_x_bucket", (Matcher("job", "=~", "a|b"), Matcher("state", "=", 'w"q'))),
        Selector("mesh_peer_info", ()),
        Selector("mesh_y", (Matcher("outcome", "!=", "ok"),)),
        Selector("up", ()),
    ]


def test_aggregation_clause_after_the_argument_and_label_functions():
    expr = ('sum(mesh_requests_total) without (entry) + '
            'label_replace(mesh_members{state!~"dead|left",}, "s", "$1", "state", "(.*)") - time() # c')
    assert selectors(expr) == [
        Selector("mesh_requests_total", ()),
        Selector("mesh_members", (Matcher("state", "!~", "dead|left"),)),
    ]
