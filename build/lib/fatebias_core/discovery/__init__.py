"""From shrunken effects to answers: guide-to-gene aggregation, hit calls, ranking, scoring."""
