# Written by sprig next to model.safetensors: the classifier sprig
# trained, as a `transformers` model. sprig classifies from the encoder's token states pooled as
# config.json's `sprig_pooling` says ("mean": masked mean over non-padding tokens, as
# sentence-transformers; "cls": the raw [CLS] state), then dropout and one linear `classifier`.
# There is no BERT pooler (dense + tanh), so plain BertForSequenceClassification would compute
# something else. Load with:
#   AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class SprigBertForSequenceClassification(BertPreTrainedModel):
    """BertModel without pooler + mean or [CLS] pooling + dropout + linear head."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pooling = getattr(config, "sprig_pooling", None) or "mean"
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"sprig_pooling must be 'mean' or 'cls', got {self.pooling!r}")
        self.bert = BertModel(config, add_pooling_layer=False)
        # Attention heads removed physically (`sprig_attention_heads`: heads kept per layer, each
        # as wide as before): narrower query/key/value and attention-output projections.
        heads = getattr(config, "sprig_attention_heads", None)
        if heads is not None:
            width = config.hidden_size // config.num_attention_heads
            for layer, k in zip(self.bert.encoder.layer, heads):
                att = layer.attention.self
                att.num_attention_heads, att.all_head_size = k, k * width
                att.query = nn.Linear(config.hidden_size, k * width)
                att.key = nn.Linear(config.hidden_size, k * width)
                att.value = nn.Linear(config.hidden_size, k * width)
                layer.attention.output.dense = nn.Linear(k * width, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, hidden, attention_mask):
        """Pooled sequence vectors [B, H] from token states [B, T, H]."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True)
        pooled = self.pool(out.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
